//! nginx in front of the gateways, configured from the template the product
//! ships (`deploy/nginx/chatter.conf`), so the load-balanced tests exercise the
//! configuration operators run.

use crate::sys;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// A running nginx with its own prefix (config, pid, logs, temp files).
pub struct Nginx {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx on a free port in front of `upstreams`.
    pub async fn start(upstreams: &[SocketAddr]) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("chatter-nginx-")
            .tempdir()
            .context("creating nginx's folder")?;
        let port = sys::free_port()?;
        let nginx = Nginx {
            port,
            dir,
            child: None,
        };
        nginx.write_config(upstreams)?;
        let mut nginx = nginx;
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(nginx.dir.path())
            .arg("-c")
            .arg(nginx.dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(nginx.dir.path().join("stderr.log"))?)
            .spawn()
            .context("spawning nginx (is the Debian package installed?)")?;
        nginx.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen on {port}: {}",
                    sys::tail_file(&nginx.dir.path().join("stderr.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(nginx)
    }

    /// Points nginx at a new set of gateways (SIGHUP: workers finish their
    /// connections, new ones go to the new list).
    pub async fn set_upstreams(&self, upstreams: &[SocketAddr]) -> Result<()> {
        self.write_config(upstreams)?;
        let child = self.child.as_ref().context("nginx is not running")?;
        sys::signal(child, rustix::process::Signal::HUP)?;
        // The master re-reads and starts new workers in a few milliseconds.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn write_config(&self, upstreams: &[SocketAddr]) -> Result<()> {
        let template = std::fs::read_to_string(template_path())
            .context("reading deploy/nginx/chatter.conf")?;
        let servers: String = upstreams
            .iter()
            .map(|addr| format!("server {addr} max_fails=1 fail_timeout=10s; "))
            .collect();
        let site = template
            .replace("${CHATTER_LISTEN}", &format!("127.0.0.1:{}", self.port))
            .replace("${CHATTER_UPSTREAM_SERVERS}", &servers);
        let dir = self.dir.path();
        std::fs::write(dir.join("chatter.conf"), site)?;
        // As root nginx would switch its workers to `nobody`, who cannot write
        // to this folder: keep them as the user running the tests.
        let user = if sys::is_root() { "user root;\n" } else { "" };
        let main = format!(
            "{user}worker_processes 1;\npid {pid};\nerror_log {dir}/error.log info;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  \
             fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  \
             include {dir}/chatter.conf;\n}}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("nginx.conf"), main)?;
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/chatter.conf")
}

/// Debian installs nginx in /usr/sbin, which is not always on a user's PATH.
fn nginx_binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("nginx")
    }
}
