use clap::Parser;

// Training allocates and frees tensors of the same few large sizes every step; glibc's malloc
// hands blocks above its mmap threshold back to the kernel and takes them again as fresh,
// zero-filled pages each time, which cost a third of an inference pass on MiniLM
// (docs/BENCHMARKS.md, "Performance levers, round 2"). mimalloc keeps and reuses them
// (`allocator::reuse_freed_pages`: without page faults).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    finetune::allocator::reuse_freed_pages();
    let cli = finetune::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("finetune={default},warn")));
    // Colours only for a person at a terminal: a redirected log (a file, CI, a pipe) stays plain
    // text; NO_COLOR turns them off everywhere.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour)
        .init();
    if let Err(e) = finetune::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
