use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = promoter::cli::Cli::parse();
    promoter::cli::main(cli)
}
