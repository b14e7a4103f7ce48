//! The `alluvium` binary; everything but the allocator choice lives in the library.

/// mimalloc instead of the system allocator: every event becomes a few small allocations that
/// are freed together when a flushed memtable goes, a pattern glibc's malloc serves slowly and
/// with per-thread arenas that keep freed memory resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    alluvium::cli::main()
}
