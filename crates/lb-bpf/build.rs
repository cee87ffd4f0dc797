//! Builds the eBPF programs (crates/lb-bpf/programs) for bpfel-unknown-none and leaves the object
//! in OUT_DIR, where `lb_bpf` embeds it.
//!
//! Needs the nightly toolchain with rust-src and bpf-linker (`cargo xtask setup` installs both).
//! Set `LB_BPF_OBJECT=/path/to/object` to embed a prebuilt object instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let crates = manifest_dir.parent().expect("crates/ folder").to_path_buf();
    let dest = out_dir.join("lb-programs.o");

    println!("cargo:rerun-if-env-changed=LB_BPF_OBJECT");
    if let Some(prebuilt) = env::var_os("LB_BPF_OBJECT") {
        std::fs::copy(&prebuilt, &dest).expect("copy LB_BPF_OBJECT");
        return;
    }

    let programs = manifest_dir.join("programs");
    for dir in [
        "lb-api",
        "lb-conntrack",
        "lb-nat",
        "lb-encap",
        "lb-datapath",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            crates.join(dir).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            crates.join(dir).join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-changed={}", programs.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        programs.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        programs.join("Cargo.lock").display()
    );

    let target_dir = out_dir.join("bpf-target");
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--locked",
        ])
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            // Without in-order memcpy expansion LLVM also expands memset inline; with it, every
            // zeroing of an address tail became a call to an out-of-line byte loop.
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--disable-expand-memcpy-in-order",
        );
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run `cargo +nightly` to build the eBPF programs ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}). If the nightly toolchain, rust-src or bpf-linker \
             is missing, run `cargo xtask setup`; otherwise the error above is a compile error in the \
             programs or the logic crates they use"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/lb-programs");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
