//! The caller's writer, as every export hands bytes to it: counted, and
//! with its own failures kept apart from the repository's. A pipe whose
//! reader went away is the client's doing ([`Error::OutputFailed`]); a full
//! disk under an output file is still a storage error of its kind, which
//! is how [`Repository::save`](crate::Repository::save) reports it.

use std::io::{self, Write};

use crate::Error;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes handed to the writer.
    pub bytes: u64,
}

/// The caller's writer, remembering whether it failed, and counting.
pub(crate) struct Output<'w> {
    out: &'w mut dyn Write,
    bytes: u64,
    failed: Option<String>,
}

impl<'w> Output<'w> {
    pub(crate) fn new(out: &'w mut dyn Write) -> Self {
        Output {
            out,
            bytes: 0,
            failed: None,
        }
    }

    /// Bytes the writer took so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The outcome: a failure of the writer is [`Error::OutputFailed`],
    /// whatever the code that wrote made of it.
    pub(crate) fn finish(
        mut self,
        operation: &'static str,
        result: Result<(), Error>,
    ) -> Result<Written, Error> {
        let flushed = match result {
            Ok(()) => self.flush(),
            Err(_) => Ok(()),
        };
        if let Some(reason) = self.failed {
            return Err(Error::OutputFailed { operation, reason });
        }
        result?;
        flushed.map_err(|e| Error::storage(operation, e))?;
        Ok(Written { bytes: self.bytes })
    }
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().inspect_err(|e| {
            self.failed.get_or_insert_with(|| e.to_string());
        })
    }
}
