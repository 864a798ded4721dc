//! The embedded mode's setup: a data directory holding the SQLite file and, when no
//! `JWT_SECRET` is configured, a generated development secret.
//!
//! The secret is kept on disk so tokens minted with `chatter-gateway token` keep
//! working across restarts, and so that command and the server agree without the
//! newcomer configuring anything.

use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};

const SECRET_FILE: &str = "jwt_secret";

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("chatter.db")
}

/// Reads the development secret from `data_dir`, creating it on first use.
/// Returns the secret and whether it was created now.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<(String, bool)> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok((secret.trim().to_owned(), false)),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path)?.write_all(secret.as_bytes())?;
    Ok((secret, true))
}

#[cfg(test)]
mod tests {
    use super::dev_secret;

    #[test]
    fn the_dev_secret_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("chatter-dev-secret-{}", std::process::id()));
        let (first, created) = dev_secret(&dir).expect("created");
        assert!(created);
        assert_eq!(first.len(), 64);
        let (again, created) = dev_secret(&dir).expect("read");
        assert!(!created);
        assert_eq!(first, again);
        let _ = std::fs::remove_dir_all(dir);
    }
}
