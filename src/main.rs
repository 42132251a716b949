//! The `pgsql-broker` command: a thin layer over the library.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(pgsql_broker::run_cli(&args));
}
