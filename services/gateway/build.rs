//! `embed_migrations!` reads the migration files at compile time, but a new
//! migration directory is not a file the compiler read: without this, adding
//! one would not rebuild the service and it would start without it.
fn main() {
    println!("cargo:rerun-if-changed=../../db/migrations/gateway");
}
