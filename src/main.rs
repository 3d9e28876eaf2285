//! The `pare` command: everything is in the library (`pare::cli::main`).

fn main() {
    std::process::exit(pare::cli::main());
}
