use clap::Parser;

fn main() {
    let argv = match infermeter::cli::config_file::expand(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = infermeter::cli::Cli::parse_from(argv);
    if let Err(e) = infermeter::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
