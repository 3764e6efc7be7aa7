use clap::Parser;

fn main() {
    let cli = finetune::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("finetune={default},warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    if let Err(e) = finetune::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
