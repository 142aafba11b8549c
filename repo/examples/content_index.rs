//! Time opening the content index of a repository and looking up each
//! digest it knows and as many it does not, for docs/benchmarks.md:
//!
//!     content_index REPO                    an existing repository
//!     content_index REPO LAYERS PER_LAYER   first add that many made-up
//!                                           layers' index files
//!
//! Takes the repository's lock: no cfsd may be serving it.

use std::path::Path;

use cfsd_repo::{Repository, VerityPolicy, content_probe};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let repo = Repository::open(Path::new(&args[0]), VerityPolicy::BestEffort)?;
    if let [_, layers, per_layer] = &args[..] {
        content_probe::synthesize(&repo, layers.parse()?, per_layer.parse()?)?;
    }
    let p = content_probe::probe(&repo)?;
    println!(
        "{} index files, {} entries: open {:.1} ms; {} lookups ({} found) {:.1} ms, {:.0} ns each",
        p.files,
        p.entries,
        p.open.as_secs_f64() * 1e3,
        p.lookups,
        p.found,
        p.lookup_time.as_secs_f64() * 1e3,
        p.lookup_time.as_nanos() as f64 / p.lookups.max(1) as f64
    );
    Ok(())
}
