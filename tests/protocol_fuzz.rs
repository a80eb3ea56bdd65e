//! Hostile input from a worker, end to end: a task writes arbitrary bytes on
//! the protocol channel before its real result. Whatever the bytes, the task
//! resolves (never hangs), the parent never panics, and the pool keeps serving.
//! (The decoders alone are fuzzed by property tests in the crate and by the
//! `cargo fuzz` target in `fuzz/`.)

use std::time::Duration;

use procpool::ProcessPool;
use proptest::prelude::*;

fn write_then_return(bytes: Vec<u8>) -> u64 {
    procpool::__test_hooks::write_bytes_to_parent(&bytes);
    7
}

fn square(x: u64) -> u64 {
    x * x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_from_a_worker_end_in_a_clean_outcome(
        bytes in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pool = ProcessPool::builder().workers(1).max_frame_size(1 << 16).build().unwrap();
        let outcome = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), pool.spawn(write_then_return, bytes)).await
        });
        prop_assert!(outcome.is_ok(), "the task hung");
        // Serving continues (a fresh worker if the old one was killed).
        prop_assert_eq!(pool.apply_blocking(square, 9), Ok(81));
        pool.terminate();
    }
}

/// The case proptest found: one stray byte ahead of a real result knocks the
/// stream out of alignment. It must end in a prompt protocol error, not a
/// wait for a frame that never comes.
#[test]
fn a_single_stray_byte_is_a_protocol_error_not_a_hang() {
    let pool = ProcessPool::builder().workers(1).build().unwrap();
    let started = std::time::Instant::now();
    let r = pool.apply_blocking(write_then_return, vec![0]);
    assert!(
        matches!(r, Err(procpool::TaskError::Protocol { .. })),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "caught by the header check, not the stall timer"
    );
    assert_eq!(pool.apply_blocking(square, 3), Ok(9));
}

#[test]
fn the_frame_limit_bounds_what_a_worker_can_make_the_parent_allocate() {
    // A length prefix of 4 GiB - 1: refused from the prefix alone.
    let r = procpool::__test_hooks::decode_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3], 1 << 20);
    assert!(matches!(
        r,
        Err(procpool::__test_hooks::FrameError::TooLarge { .. })
    ));
}
