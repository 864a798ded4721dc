//! The embedded mode's setup: a data directory holding the SQLite file and, when no
//! `JWT_SECRET` is configured, a generated development secret.
//!
//! The secret is kept on disk so tokens minted with `chatter-gateway token` keep
//! working across restarts, and so that command and the server agree without the
//! newcomer configuring anything.
//!
//! Both files are made owner-only (0600) on every start, existing ones too: the
//! secret signs any user's token, and the database holds every message. SQLite
//! gives its `-wal` and `-shm` files the database file's mode.

use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};

const SECRET_FILE: &str = "jwt_secret";
const DATABASE_FILE: &str = "chatter.db";
/// The files SQLite keeps beside the database in WAL mode.
const DATABASE_SIDE_FILES: [&str; 2] = ["chatter.db-wal", "chatter.db-shm"];

/// Creates `data_dir` and the SQLite file in it if missing, makes the database
/// owner-only (an empty file is a new SQLite database), and returns its path.
pub fn prepare_database(data_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DATABASE_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    owner_only_on_create(&mut options);
    options.open(&path)?;
    make_owner_only(&path)?;
    for side in DATABASE_SIDE_FILES {
        let side = data_dir.join(side);
        if side.exists() {
            make_owner_only(&side)?;
        }
    }
    Ok(path)
}

/// Reads the development secret from `data_dir`, creating it on first use.
/// Returns the secret and whether it was created now.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<(String, bool)> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => {
            make_owner_only(&path)?;
            return Ok((secret.trim().to_owned(), false));
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    owner_only_on_create(&mut options);
    options.open(&path)?.write_all(secret.as_bytes())?;
    // `mode` applies only when the file is created: an empty one left behind
    // keeps its old mode otherwise.
    make_owner_only(&path)?;
    Ok((secret, true))
}

fn owner_only_on_create(options: &mut std::fs::OpenOptions) {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    #[cfg(not(unix))]
    let _ = options;
}

fn make_owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("chatter-{name}-{}", std::process::id()))
    }

    #[test]
    fn the_dev_secret_is_created_once_and_kept() {
        let dir = temp_dir("dev-secret");
        let (first, created) = dev_secret(&dir).expect("created");
        assert!(created);
        assert_eq!(first.len(), 64);
        let (again, created) = dev_secret(&dir).expect("read");
        assert!(!created);
        assert_eq!(first, again);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn the_secret_and_the_database_are_made_owner_only_even_when_they_exist() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        let dir = temp_dir("owner-only");
        std::fs::create_dir_all(&dir).expect("dir");
        let files = [SECRET_FILE, DATABASE_FILE, DATABASE_SIDE_FILES[0]];
        for file in files {
            let path = dir.join(file);
            std::fs::write(&path, "0123456789abcdef0123456789abcdef").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let (secret, created) = dev_secret(&dir).expect("read");
        assert!(!created);
        assert_eq!(secret, "0123456789abcdef0123456789abcdef");
        let database = prepare_database(&dir).expect("prepared");
        assert_eq!(database, dir.join(DATABASE_FILE));
        for file in files {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        // Created fresh, they are owner-only from the start.
        let fresh = temp_dir("owner-only-fresh");
        dev_secret(&fresh).expect("created");
        prepare_database(&fresh).expect("created");
        assert_eq!(mode(&fresh.join(SECRET_FILE)), 0o600);
        assert_eq!(mode(&fresh.join(DATABASE_FILE)), 0o600);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(fresh);
    }
}
