//! `embed_migrations!` reads the migration files at compile time, but a new
//! migration directory is not a file the compiler read: without this, adding
//! one to the runtime's sets would not rebuild the crate and the services
//! would start without it.
fn main() {
    println!("cargo:rerun-if-changed=../../db/migrations/runtime");
}
