//! The images most tests pull: one with every kind of entry, one small.

use super::*;

/// The host's image with every kind of tar entry composefs handles, over
/// three layers (plain, gzip, zstd); the upper layers delete, hide and
/// replace what the lower ones have.
pub fn everything_image() -> Image {
    Image::new(everything_layers())
        .label("org.example.fixture", "everything")
        .label("org.example.layers", "3")
}

/// A directory name of `n` bytes made of `c`.
pub(super) fn long(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// The long paths of [`everything_image`], for assertions.
pub fn long_paths() -> [String; 5] {
    [
        // > 100 bytes: a GNU long name.
        format!("usr/share/{}/{}.txt", long('g', 60), long('n', 70)),
        // > 255 bytes: only PAX can hold it.
        format!(
            "usr/share/{}/{}/{}/file",
            long('p', 90),
            long('q', 90),
            long('r', 90)
        ),
        // 101..255 bytes with a short last part: the ustar prefix field.
        format!("usr/share/{}/{}/short", long('u', 99), long('v', 40)),
        // A symlink whose target is > 100 bytes, written with PAX.
        "usr/share/pax-long-link".to_owned(),
        // A hard link to the GNU long name: a GNU long link name.
        "usr/share/gnu-long-hardlink".to_owned(),
    ]
}

fn everything_layers() -> Vec<Layer> {
    let [gnu_long, pax_long, ustar_long, pax_link, gnu_hardlink] = long_paths();
    let gnu_dir_1 = format!("usr/share/{}", long('g', 60));
    let pax_dir_1 = format!("usr/share/{}", long('p', 90));
    let pax_dir_2 = format!("{pax_dir_1}/{}", long('q', 90));
    let pax_dir_3 = format!("{pax_dir_2}/{}", long('r', 90));
    let ustar_dir_1 = format!("usr/share/{}", long('u', 99));
    let ustar_dir_2 = format!("{ustar_dir_1}/{}", long('v', 40));

    let base = vec![
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::dir("usr/lib"),
        Entry::dir("usr/share"),
        Entry::dir("etc"),
        Entry::dir("dev"),
        Entry::dir("run"),
        Entry::dir("olddir"),
        Entry::dir("opaque"),
        Entry::dir("opaque/sub"),
        Entry::dir("home").mode(0o755),
        Entry::dir("home/user").owner(1000, 1000).mode(0o700),
        Entry::dir("tmp").mode(0o1777),
        // Regular files: empty, tiny, exactly the inline limit, just over
        // it, a few MiB.
        Entry::file("etc/empty", Vec::new()),
        Entry::file("etc/hello", "hello from layer 0\n"),
        Entry::file("etc/removed", "deleted by a whiteout in layer 1\n"),
        Entry::file(
            "etc/shared",
            "replaced in layer 1; its hard link keeps this\n",
        ),
        Entry::hardlink("etc/shared-hardlink", "etc/shared"),
        Entry::file("usr/lib/exactly64", vec![b'6'; 64]),
        Entry::file("usr/lib/just-over-64", vec![b'7'; 65]),
        Entry::file("usr/lib/big.bin", noise(1, 3 * 1024 * 1024 + 123)),
        Entry::hardlink("usr/lib/big-hardlink", "usr/lib/big.bin"),
        Entry::hardlink("usr/bin/big-hardlink-2", "usr/lib/big.bin"),
        Entry::file("home/user/notes", "owned by user 1000\n")
            .owner(1000, 100)
            .mode(0o600),
        Entry::file("usr/bin/ping", noise(2, 5000))
            .mode(0o4755)
            .xattr("security.capability", &cap_net_raw())
            .xattr("user.comment", b"dropped: not on the allowlist"),
        Entry::file("usr/bin/setgid-tool", noise(3, 300))
            .mode(0o2755)
            .owner(0, 5),
        Entry::file("usr/bin/old-mtime", "mtime in 1999\n").mtime(915_148_800),
        // Symbolic links: relative, absolute, dangling, to a directory.
        Entry::symlink("usr/bin/sh", "ping"),
        Entry::symlink("etc/big-link", "/usr/lib/big.bin"),
        Entry::symlink("etc/dangling", "/nonexistent/target"),
        Entry::symlink("lib", "usr/lib"),
        // Devices and a FIFO.
        Entry::char_device("dev/null-like", 1, 3),
        Entry::block_device("dev/loop-like", 7, 0),
        Entry::fifo("dev/fifo").mode(0o600),
        // Long names in every encoding.
        Entry::dir(&gnu_dir_1),
        Entry::file(&gnu_long, noise(4, 200)),
        Entry::dir(&pax_dir_1).name_style(NameStyle::Pax),
        Entry::dir(&pax_dir_2).name_style(NameStyle::Pax),
        Entry::dir(&pax_dir_3).name_style(NameStyle::Pax),
        Entry::file(&pax_long, "a PAX path\n").name_style(NameStyle::Pax),
        Entry::dir(&ustar_dir_1).name_style(NameStyle::UstarPrefix),
        Entry::dir(&ustar_dir_2).name_style(NameStyle::UstarPrefix),
        Entry::file(&ustar_long, "a ustar prefix\n").name_style(NameStyle::UstarPrefix),
        Entry::symlink(&pax_link, &format!("/{pax_long}")).name_style(NameStyle::Pax),
        Entry::hardlink(&gnu_hardlink, &gnu_long),
        // What the upper layers delete or hide.
        Entry::file("olddir/x", "in a directory deleted by layer 1\n"),
        Entry::file("opaque/a", "hidden by the opaque marker\n"),
        Entry::file("opaque/sub/b", noise(5, 100)),
        // /run is emptied in composefs images of OCI content.
        Entry::file("run/leftover", "dropped from /run\n"),
    ];
    let upper = vec![
        Entry::whiteout("etc/removed"),
        Entry::whiteout("olddir"),
        Entry::dir("opaque").mode(0o750),
        Entry::opaque("opaque"),
        Entry::file("opaque/new", "the only entry left in /opaque\n"),
        Entry::file("etc/hello", "hello from layer 1\n"),
        Entry::file("etc/shared", "layer 1's own shared\n"),
        // The most-derived layer decides a directory's metadata.
        Entry::dir("usr/bin").mode(0o711).mtime(MTIME + 3600),
        Entry::file("usr/lib/layer1.bin", noise(6, 100_000)),
    ];
    let top = vec![
        Entry::dir("usr").mode(0o751).mtime(MTIME + 7200),
        Entry::dir("srv").owner(33, 33),
        Entry::file("srv/data", noise(7, 70))
            .owner(33, 33)
            .mode(0o640),
        Entry::whiteout("usr/bin/setgid-tool"),
        Entry::file("usr/lib/layer2.bin", noise(8, 2 * 1024 * 1024)),
        Entry::hardlink("usr/lib/layer2-hardlink", "usr/lib/layer2.bin"),
    ];
    vec![
        Layer::new(Compression::None, base),
        Layer::new(Compression::Gzip, upper),
        Layer::new(Compression::Zstd, top),
    ]
}

/// A small single-layer image: `/usr` and one file with `content`.
pub fn small_image(compression: Compression, content: &str) -> Image {
    Image::new(vec![Layer::new(
        compression,
        vec![
            Entry::dir("usr"),
            Entry::dir("usr/share"),
            Entry::file("usr/share/content", content),
            Entry::file("usr/share/big", noise(content.len() as u64, 10_000)),
        ],
    )])
}
