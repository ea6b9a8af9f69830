//! Test support shared by every Weir crate: the conformance suites that every transport
//! ([`bus`]) and every database adapter ([`stores`]) must pass, written once and instantiated
//! per adapter in this crate's `tests/`; and [`app`], the harness of the services' black-box
//! tests. Not for production code.

pub mod app;
pub mod bus;
pub mod router;
pub mod stores;

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
