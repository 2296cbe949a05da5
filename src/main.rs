use clap::Parser;

fn main() {
    let cli = infermeter::cli::Cli::parse();
    if let Err(e) = infermeter::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
