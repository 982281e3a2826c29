//! `shared::MIGRATOR` embeds `migrations/` at compile time: a migration
//! added or changed must rebuild this crate, or binaries would run without
//! it.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
