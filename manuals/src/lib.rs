//! Man pages and shell completions for cfsd and cfsctl, made from the same
//! clap definitions the binaries parse their arguments with.
//!
//! Each binary has a hidden way to call [`write`] (`cfsctl
//! generate-manuals DIR`, `cfsd --generate-manuals DIR`);
//! `scripts/manuals` runs both. The layout under `DIR` is what a package
//! installs: `man/<page>.<section>` and `completions/{<bin>.bash, _<bin>,
//! <bin>.fish}`.

use std::{
    io,
    path::{Path, PathBuf},
};

use cfsd_varlink::version;
use clap::Command;
use clap_complete::Shell;

/// The manual section a binary's pages go in.
#[derive(Debug, Clone, Copy)]
pub enum Section {
    /// User commands (cfsctl).
    Commands,
    /// System administration and daemons (cfsd).
    Administration,
}

impl Section {
    fn number(self) -> &'static str {
        match self {
            Section::Commands => "1",
            Section::Administration => "8",
        }
    }
}

/// Write the man pages of `command` and of each of its visible
/// subcommands, nested ones included (`cfsctl-oci-pull.1`), under
/// `out/man`, and its bash, zsh and fish completions under
/// `out/completions`. Returns the files written.
pub fn write(command: Command, section: Section, out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut command = command.disable_help_subcommand(true);
    // build() gives each subcommand its display name, "cfsctl-oci-pull",
    // which names its page.
    command.build();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let mut written = Vec::new();
    write_pages(&command, section, &man, &mut written)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    let name = command.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut command,
            &name,
            &completions,
        )?);
    }
    Ok(written)
}

fn write_pages(
    command: &Command,
    section: Section,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let page = clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section(section.number())
        .date(version::DATE)
        .source(format!("cfsd {}", version::VERSION))
        .manual("cfsd");
    written.push(page.generate_to(dir)?);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, section, dir, written)?;
    }
    Ok(())
}
