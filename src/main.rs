fn main() {
    std::process::exit(pare::cli::main());
}
