//! Images served over FUSE, for peers that may not mount kernel images.
//!
//! The peer mounts an empty FUSE filesystem with its own rights (Debian's
//! `fusermount3`) and hands over the `/dev/fuse` of that mount; this
//! module checks that it is one, opens the image's EROFS and the
//! repository's `objects/`, and serves them with composefs-rs's FUSE
//! server ([`serve`]), which reads the EROFS by NID on demand as the
//! kernel asks.
//!
//! A FUSE mount is no composefs overlay, so the mount tables that GC
//! reads for kernel mounts (see [`crate::mounts`]) do not name its
//! image. Instead, each image served is *leased* ([`Served`]) for as long
//! as its server runs, and GC keeps leased images as it keeps mounted
//! ones. The lease is taken while holding collections off, so a
//! collection either ends before the image is looked up (and the lookup
//! then fails) or starts after the lease is there.

use std::{
    collections::BTreeMap,
    os::fd::{BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
};

use rustix::{
    event::{PollFd, PollFlags, Timespec},
    fs::{AtFlags, FileType, OFlags, StatxFlags},
};

use composefs::fsverity::FsVerityHashValue;

mod proxy;

use crate::{Error, Repository, oci::images::open, repository::with_store};

/// The device number of `/dev/fuse` (misc major 10, minor 229), which
/// every node of the FUSE driver has whatever its path.
const FUSE_DEVICE: (u32, u32) = (10, 229);

/// The images served now, each with how many servers serve it.
#[derive(Debug, Default)]
pub(crate) struct ServedImages(Arc<Mutex<BTreeMap<String, usize>>>);

impl ServedImages {
    fn lease(&self, image_id: &str) -> Served {
        let mut served = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *served.entry(image_id.to_owned()).or_default() += 1;
        Served {
            images: self.0.clone(),
            image_id: image_id.to_owned(),
        }
    }

    /// The ids of the images served now.
    pub(crate) fn ids(&self) -> Vec<String> {
        let served = self.0.lock().unwrap_or_else(|e| e.into_inner());
        served.keys().cloned().collect()
    }
}

/// Keeps an image from garbage collection while a FUSE server serves it;
/// dropped when the server has stopped.
#[derive(Debug)]
pub struct Served {
    images: Arc<Mutex<BTreeMap<String, usize>>>,
    image_id: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let mut served = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = served.get_mut(&self.image_id) {
            *count -= 1;
            if *count == 0 {
                served.remove(&self.image_id);
            }
        }
    }
}

/// What a FUSE server of one image needs: its EROFS and the objects its
/// files' contents are in, open, and the lease that keeps them.
#[derive(Debug)]
pub struct FuseImage {
    /// The composefs image id served, in hex.
    pub image_id: String,
    /// The EROFS image, open for reading.
    pub erofs: OwnedFd,
    /// The repository's `objects/` directory.
    pub objects: OwnedFd,
    /// Keeps the image from GC until dropped.
    pub served: Served,
}

impl Repository {
    /// Open `image` (a tag, digest or unique prefix, as for a mount) to be
    /// served over FUSE, leased against GC until the returned
    /// [`FuseImage`]'s `served` is dropped.
    pub fn fuse_image(&self, image: &str) -> Result<FuseImage, Error> {
        let _hold = self.hold(format!("starting a FUSE mount of {image}"));
        let (image_id, erofs, objects) = with_store!(self.store(), s => {
            let found = open(s, image)?;
            let failed = |e: anyhow::Error| Error::MountFailed {
                image: image.to_owned(),
                reason: format!("{e:#}"),
            };
            let id = found.erofs_image_ref(s, false).map_err(failed)?.to_hex();
            let (erofs, _) = s.open_image(&id).map_err(failed)?;
            let objects = s
                .objects_dir()
                .map_err(|e| Error::storage("opening the objects directory", std::io::Error::from(e)))?
                .try_clone()
                .map_err(|e| Error::storage("opening the objects directory", e))?;
            Ok::<_, Error>((id, erofs, objects))
        })?;
        let served = self.served_images().lease(&image_id);
        Ok(FuseImage {
            image_id,
            erofs,
            objects,
            served,
        })
    }
}

/// Check that `fd` is a `/dev/fuse` open for reading and writing whose
/// mount waits for its server: the kernel queues its first request
/// (FUSE_INIT) when the filesystem is mounted, so a `/dev/fuse` with
/// nothing to read was never mounted, or was answered already.
///
/// The type comes from the kernel's cache (`AT_STATX_DONT_SYNC`): `fd`
/// may be a file on a FUSE filesystem whose server never answers.
pub fn check_fuse_device(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let not = |reason: String| Err(Error::NotFuseDevice { reason });
    let st = match rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE,
    ) {
        Ok(st) => st,
        Err(e) => return not(format!("cannot tell what it is: {e}")),
    };
    let kind = FileType::from_raw_mode(st.stx_mode.into());
    let rdev = (st.stx_rdev_major, st.stx_rdev_minor);
    if kind != FileType::CharacterDevice {
        return not(format!("it is a {}", kind_name(kind)));
    }
    if rdev != FUSE_DEVICE {
        return not(format!(
            "it is the character device {}:{}, not {}:{}",
            rdev.0, rdev.1, FUSE_DEVICE.0, FUSE_DEVICE.1
        ));
    }
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| Error::NotFuseDevice {
        reason: format!("cannot read its flags: {e}"),
    })?;
    if flags.contains(OFlags::PATH) || (flags & OFlags::RWMODE) != OFlags::RDWR {
        return not("it is not open for reading and writing".to_owned());
    }
    waiting_for_server(fd)
}

/// Whether the FUSE connection of `fd` has a request waiting: poll says
/// POLLERR for a `/dev/fuse` never mounted or whose connection ended.
fn waiting_for_server(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let mut polled = [PollFd::new(&fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let reason = match rustix::event::poll(&mut polled, Some(&zero)) {
        Err(e) => format!("cannot poll it: {e}"),
        Ok(_) => {
            let events = polled[0].revents();
            if events.contains(PollFlags::ERR) {
                "it is not mounted, or its mount has ended".to_owned()
            } else if events.contains(PollFlags::IN) {
                return Ok(());
            } else {
                "its mount's first request was taken already".to_owned()
            }
        }
    };
    Err(Error::FuseNotMounted { reason })
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "pipe or FIFO",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Serve the EROFS `erofs`, with its files' contents in `objects`, on the
/// mounted `dev_fuse` until the mount goes (its peer unmounts it, or the
/// connection is aborted). Blocks.
///
/// composefs-fuse serves it, through [`proxy`], which answers what it
/// gets wrong. composefs-fuse 0.9.4 keeps the image it serves in memory
/// for the life of the process (it leaks it to serve by reference), so a
/// long-lived process should run this in a process of its own per mount,
/// as cfsd does.
pub fn serve(dev_fuse: OwnedFd, erofs: OwnedFd, objects: OwnedFd) -> std::io::Result<()> {
    // Read by offset: composefs-fuse reads the same file from where its
    // offset is.
    let bytes = read_whole(&erofs)?;
    let image = composefs::erofs::reader::Image::open(&bytes)
        .map_err(|e| std::io::Error::other(format!("the image's EROFS: {e}")))?;
    let (ours, server) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    for end in [&ours, &server] {
        // A read's reply (128 KiB at most, see proxy) travels as one
        // message; root may raise the buffers past the system's limit.
        let size = 4 << 20;
        rustix::net::sockopt::set_socket_send_buffer_size_force(end, size)
            .or_else(|_| rustix::net::sockopt::set_socket_send_buffer_size(end, size))?;
        rustix::net::sockopt::set_socket_recv_buffer_size_force(end, size)
            .or_else(|_| rustix::net::sockopt::set_socket_recv_buffer_size(end, size))?;
    }
    let server = std::thread::Builder::new()
        .name("composefs-fuse".into())
        .spawn(move || {
            let options = composefs_fuse::ServeFuseOptions::default();
            composefs_fuse::serve_fuse_fd(server, erofs, Arc::new(objects), &options)
        })?;
    let proxied = proxy::run(&dev_fuse, &ours, &proxy::Files(image));
    // Closing our end ends composefs-fuse's session: its next read sees
    // the socket closed.
    drop(ours);
    let served = server
        .join()
        .map_err(|_| std::io::Error::other("the FUSE server panicked"))?;
    proxied?;
    match served {
        // The socket closed under it: that is how its session ends. Closed
        // while a reply of its was still unread (unmounted just after the
        // mount, say), it reads a reset instead, or writes into a closed
        // pipe.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The whole of `file`, read by offset.
fn read_whole(file: &OwnedFd) -> std::io::Result<Vec<u8>> {
    let len = rustix::fs::fstat(file)?.st_size as usize;
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match rustix::io::pread(file, &mut bytes[done..], done as u64)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn reason(fd: BorrowedFd<'_>) -> String {
        match check_fuse_device(fd) {
            Err(Error::NotFuseDevice { reason }) => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_fuse_device_is_one() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert_eq!(reason(read.as_fd()), "it is a pipe or FIFO");
        let file = tempfile::tempfile().unwrap();
        assert_eq!(reason(file.as_fd()), "it is a regular file");
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            reason(null.as_fd()),
            "it is the character device 1:3, not 10:229"
        );
    }

    #[test]
    fn a_fuse_device_never_mounted_waits_for_nothing() {
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("this machine has /dev/fuse");
        assert!(matches!(
            check_fuse_device(fuse.as_fd()),
            Err(Error::FuseNotMounted { .. })
        ));
        let read_only = std::fs::File::open("/dev/fuse").unwrap();
        assert_eq!(
            reason(read_only.as_fd()),
            "it is not open for reading and writing"
        );
    }

    #[test]
    fn a_lease_lasts_until_its_last_holder_goes() {
        let images = ServedImages::default();
        let first = images.lease("ab");
        let second = images.lease("ab");
        let other = images.lease("cd");
        assert_eq!(images.ids(), ["ab", "cd"]);
        drop(first);
        drop(other);
        assert_eq!(images.ids(), ["ab"]);
        drop(second);
        assert!(images.ids().is_empty());
    }
}
