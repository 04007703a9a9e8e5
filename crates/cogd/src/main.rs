//! The standalone `cogd` binary: the same server as the Python package's
//! `cogd` command, with the worker's interpreter from `--python`, `COGD_PYTHON`
//! or `python3` on PATH.

fn main() {
    std::process::exit(cogd::cli::main(std::env::args().collect(), None));
}
