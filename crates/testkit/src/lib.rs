//! Test support shared by every Weir crate: the conformance suites that every transport
//! ([`bus`]) and every database adapter ([`stores`]) must pass, written once and instantiated
//! per adapter in this crate's `tests/`; and [`app`], the harness of the services' black-box
//! tests; [`server`], brokers a test starts for itself. Not for production code.

pub mod app;
pub mod bus;
pub mod router;
pub mod server;
pub mod stores;

/// A loopback port that is free now, for a server that another process will bind — or bind
/// again after a restart. It is picked at random below Linux's ephemeral range (32768–60999):
/// a port from that range goes back to the pool once its listener closes, and the kernel may
/// hand it to any process's outgoing connection, after which a server starting on it fails with
/// "address in use" (seen: `weir up` restarted on its port while other tests connected to
/// PostgreSQL). A port below the range is taken only by someone who picks it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    loop {
        let port = 20_000 + (RandomState::new().hash_one(std::time::Instant::now()) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Expands to one `#[tokio::test]` per case of `$suite`, each calling `$crate::$suite::case(&arg)`
/// with a fresh value of `$arg`. The suites' own macros list their cases through it.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_cases {
    ($suite:ident, $arg:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let arg = $arg;
                $crate::$suite::$case(&arg).await;
            }
        )*
    };
}
