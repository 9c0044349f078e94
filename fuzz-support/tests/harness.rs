//! The harness measures what it claims: the allocator counts this thread's heap growth, and
//! case counts and seeds come from the environment's defaults.

#[global_allocator]
static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;

#[test]
fn peak_growth_sees_an_allocation_that_is_freed_again() {
    let (len, peak) = conclave_fuzz::peak_growth(|| {
        let buffer = vec![7u8; 1 << 20];
        buffer.len()
    });
    assert_eq!(len, 1 << 20);
    assert!(peak >= 1 << 20, "peak {peak} missed a 1 MiB allocation");
    let ((), idle) = conclave_fuzz::peak_growth(|| ());
    assert!(
        idle < 4096,
        "an empty closure grew the heap by {idle} bytes"
    );
}

#[test]
fn default_case_counts_apply_without_the_environment() {
    if std::env::var_os("CONCLAVE_FUZZ_CASES").is_none() {
        assert_eq!(conclave_fuzz::cases(123), 123);
    }
    let _runner = conclave_fuzz::runner(5, 42);
}
