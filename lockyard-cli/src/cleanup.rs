//! `cleanup`: remove stale lock files.

use std::path::Path;

use lockyard::{CleanupOptions, Escaped, FileLockManager};

use crate::args::CleanupArgs;
use crate::exit::CliError;
use crate::lockdir::{existing_manager, resolve_dir};
use crate::output::print;

pub(crate) async fn run(args: &CleanupArgs) -> Result<u8, CliError> {
    let (dir, _) = resolve_dir(&args.dir);
    let Some(manager) = existing_manager(&args.dir)? else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        print(&format!(
            "{verb} 0 stale lock files from {}\n",
            Escaped(dir.display())
        ))?;
        return Ok(0);
    };
    let mut options = CleanupOptions::default().remove_unrecorded(args.unrecorded);
    options.max_age = args.max_age;
    let text = if args.dry_run {
        let stale = manager.stale_locks_with(&options).await?;
        let mut text = String::new();
        for info in &stale {
            text.push_str(&format!("{}\n", Escaped(info.path.display())));
        }
        text.push_str(&format!(
            "would remove {} stale lock file{} from {}\n",
            stale.len(),
            plural(stale.len()),
            Escaped(dir_of(&manager).display())
        ));
        text
    } else {
        let removed = manager.cleanup_with(&options).await?.len();
        format!(
            "removed {removed} stale lock file{} from {}\n",
            plural(removed),
            Escaped(dir_of(&manager).display())
        )
    };
    print(&text)?;
    Ok(0)
}

fn dir_of(manager: &FileLockManager) -> &Path {
    manager.dir()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
