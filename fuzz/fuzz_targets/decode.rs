//! Arbitrary bytes through both sides' frame decoders: must never panic and
//! never allocate past the frame limit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = procpool::__test_hooks::decode_all(data, 1 << 16);
});
