//! Running one test body against every deployment: the cluster (Redis,
//! Postgres, separate workers), the same on a Redis Cluster (sharded keys and
//! pub/sub), and the embedded mode (one process, SQLite).
//! The protocol is the same on both, and so are the assertions; tests that only
//! make sense for one say why.

use crate::{Binaries, Cluster, ClusterBuilder};

/// Which deployment a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Cluster,
    /// The cluster on a six-node Redis Cluster instead of one `redis-server`.
    RedisCluster,
    Embedded,
}

impl Backend {
    /// A cluster builder for this backend, with the harness defaults
    /// (`binaries` is `chatter_tests::binaries!()`).
    pub fn builder(self, binaries: Binaries) -> ClusterBuilder {
        let builder = Cluster::builder(binaries);
        match self {
            Backend::Cluster => builder,
            Backend::RedisCluster => builder.on_redis_cluster(),
            Backend::Embedded => builder.embedded(),
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as the
/// tests `cluster::name`, `redis_cluster::name` and `embedded::name`. (For tests that take a started
/// cluster instead, see [`on_every_backend!`](crate::on_every_backend).)
#[macro_export]
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::backend::Backend::Cluster).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::backend::Backend::RedisCluster).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::backend::Backend::Embedded).await
                }
            )*
        }
    };
}
