//! Examples of the vdi crates; run them with `cargo run -p examples --example NAME`.
