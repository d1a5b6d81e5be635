//! Build script: rebuild when a migration is added, because `sqlx::migrate!` embeds the
//! `migrations/` trees at compile time and only notices changes to files it already knows.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
