//! One zstd compression context making frame after frame: a blob has a
//! frame per chunk and per run of headers, tens of thousands for a big
//! layer, and a new context for each would cost an allocation of its
//! window every time.

use std::io::{self, Write};

use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

/// The compression level of pushed zstd layers, the same as plain zstd.
const LEVEL: i32 = 3;
/// The size of the buffer compressed bytes collect in.
const OUT: usize = 128 << 10;

/// A frame encoder, reset between frames.
pub(super) struct Frames {
    encoder: Encoder<'static>,
    out: Vec<u8>,
    /// Whether the current frame has had any input.
    open: bool,
}

impl Frames {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Frames {
            encoder: Encoder::new(LEVEL)?,
            out: Vec::with_capacity(OUT),
            open: false,
        })
    }

    /// Compress `bytes` into the current frame, writing to `sink` what
    /// the encoder gives back.
    pub(super) fn write(&mut self, bytes: &[u8], sink: &mut impl Write) -> io::Result<()> {
        let mut input = InBuffer::around(bytes);
        while input.pos() < bytes.len() {
            self.out.clear();
            let mut output = OutBuffer::around(&mut self.out);
            self.encoder.run(&mut input, &mut output)?;
            sink.write_all(&self.out)?;
        }
        self.open |= !bytes.is_empty();
        Ok(())
    }

    /// End the current frame, if it had input; the encoder is ready for
    /// the next one.
    pub(super) fn end_frame(&mut self, sink: &mut impl Write) -> io::Result<()> {
        if !self.open {
            return Ok(());
        }
        loop {
            self.out.clear();
            let mut output = OutBuffer::around(&mut self.out);
            let left = self.encoder.finish(&mut output, false)?;
            sink.write_all(&self.out)?;
            if left == 0 {
                break;
            }
        }
        self.encoder.reinit()?;
        self.open = false;
        Ok(())
    }

    /// `bytes` as one whole frame.
    pub(super) fn frame(&mut self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut frame = Vec::new();
        self.write(bytes, &mut frame)?;
        self.end_frame(&mut frame)?;
        Ok(frame)
    }
}
