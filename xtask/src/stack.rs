//! `cargo xtask stack`: the kernel programs' stack frames and their deepest call chains, read
//! from the disassembly of the object `lb-bpf` embeds (the verifier's limit is 512 bytes for
//! the frames of a call chain together).
//!
//! A function's frame is the deepest `r10 - N` it addresses; a call edge is a BPF-to-BPF call
//! (`call` with source register 1), to the instruction after it plus its immediate, or, from
//! a program's section into `.text`, to the relocated instruction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, output, root_dir, run, LLVM_PREFIX};

/// One function of the object: its frame and the functions it calls.
#[derive(Default)]
struct Function {
    frame: u32,
    calls: Vec<String>,
}

/// Builds the programs (through `lb-bpf`'s build script) unless given an `object`, then prints
/// each program's deepest chain and every function's frame.
pub fn stack(object: Option<PathBuf>) -> Result<()> {
    let object = match object {
        Some(o) => o,
        None => {
            run(cargo().args(["build", "-p", "lb-bpf"]))?;
            newest_object(&root_dir().join("target/debug/build"))?
        }
    };
    let objdump = format!("{LLVM_PREFIX}/bin/llvm-objdump");
    let listing = output(Command::new(&objdump).arg("-drC").arg(&object))
        .with_context(|| format!("`{objdump} -drC {}` failed", object.display()))?;
    let (functions, programs) = parse(&listing);
    println!("object: {}", object.display());
    println!("deepest call chain per program (frames in bytes, as `r10 - N` addresses them):");
    let mut deepest = 0;
    for p in &programs {
        let (total, chain) = chain(&functions, p);
        deepest = deepest.max(total);
        let path: Vec<String> = chain
            .iter()
            .map(|f| format!("{} {}", short(f), functions[f].frame))
            .collect();
        println!("  {total:>4} B  {}", path.join(" → "));
    }
    println!("deepest: {deepest} B (limit 512 B)");
    println!("frames:");
    // One line per name and frame: the XDP and TC instances of a function often agree.
    let mut all: Vec<(u32, String)> = functions
        .iter()
        .filter(|(_, f)| f.frame > 0)
        .map(|(name, f)| (f.frame, short(name)))
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    all.dedup();
    for (frame, name) in all {
        println!("  {frame:>4} B  {name}");
    }
    Ok(())
}

/// The programs object of the newest `lb-bpf` build.
fn newest_object(build: &Path) -> Result<PathBuf> {
    let mut newest = None;
    for dir in std::fs::read_dir(build).context("no build folder: build lb-bpf first")? {
        let object = dir?.path().join("out/lb-programs.o");
        if let Ok(modified) = object.metadata().and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, object));
            }
        }
    }
    match newest {
        Some((_, object)) => Ok(object),
        None => bail!("no lb-programs.o under {}", build.display()),
    }
}

/// The functions of an `llvm-objdump -drC` listing, and the programs (functions outside
/// `.text`).
fn parse(listing: &str) -> (HashMap<String, Function>, Vec<String>) {
    let mut functions: HashMap<String, Function> = HashMap::new();
    let mut programs = Vec::new();
    // (section, first instruction) → function, and each call as (caller, section, target).
    let mut starts: HashMap<(String, u64), String> = HashMap::new();
    let mut calls: Vec<(String, String, u64)> = Vec::new();
    let (mut section, mut current) = (String::new(), String::new());
    let mut lines = listing.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(s) = line.strip_prefix("Disassembly of section ") {
            section = s.trim_end_matches(':').to_string();
        } else if let Some((addr, name)) = label(line) {
            current = name.to_string();
            starts.insert((section.clone(), addr / 8), current.clone());
            functions.entry(current.clone()).or_default();
            if section != ".text" {
                programs.push(current.clone());
            }
        } else if let Some((at, bytes, text)) = instruction(line) {
            let f = functions.entry(current.clone()).or_default();
            if let Some(n) = text.split("r10 - ").nth(1).and_then(frame_offset) {
                f.frame = f.frame.max(n);
            }
            // `call` with source register 1: a BPF-to-BPF call (helpers have 0).
            if bytes.first() == Some(&0x85) && bytes.get(1).map(|b| b >> 4) == Some(1) {
                let imm = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                let reloc = lines
                    .peek()
                    .filter(|l| l.contains("R_BPF_64_32"))
                    .and_then(|l| l.split_whitespace().last())
                    .map(str::to_string);
                let (sec, target) = match reloc {
                    Some(s) => (s, i64::from(imm) + 1),
                    None => (section.clone(), at as i64 + i64::from(imm) + 1),
                };
                calls.push((current.clone(), sec, target as u64));
            }
        }
    }
    for (caller, sec, target) in calls {
        let callee = starts
            .get(&(sec.clone(), target))
            .cloned()
            .unwrap_or_else(|| format!("{sec}+{target}"));
        functions.entry(callee.clone()).or_default();
        let f = functions.entry(caller).or_default();
        if !f.calls.contains(&callee) {
            f.calls.push(callee);
        }
    }
    (functions, programs)
}

/// A function label: `0000000000001e30 <name>:`.
fn label(line: &str) -> Option<(u64, &str)> {
    let (addr, rest) = line.split_once(" <")?;
    let name = rest.strip_suffix(">:")?;
    Some((u64::from_str_radix(addr, 16).ok()?, name))
}

/// An instruction: `  992:\t85 10 00 00 cc 1c 00 00\tcall 0x1ccc`.
fn instruction(line: &str) -> Option<(u64, Vec<u8>, &str)> {
    let (at, rest) = line.trim_start().split_once(":\t")?;
    let (raw, text) = rest.split_once('\t')?;
    let bytes = raw
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some((at.parse().ok()?, bytes, text))
}

/// The `N` of `r10 - N)`, hexadecimal (`0x..`) or decimal.
fn frame_offset(s: &str) -> Option<u32> {
    let n = s.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    match n.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => n.parse().ok(),
    }
}

/// The deepest chain from `f`: its total and its functions.
fn chain(functions: &HashMap<String, Function>, f: &str) -> (u32, Vec<String>) {
    let Some(func) = functions.get(f) else {
        return (0, vec![f.to_string()]);
    };
    let (below, mut path) = func
        .calls
        .iter()
        .map(|c| chain(functions, c))
        .max_by_key(|(total, _)| *total)
        .unwrap_or_default();
    path.insert(0, f.to_string());
    (func.frame + below, path)
}

/// A demangled name without its generic arguments.
fn short(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim_end_matches("::").to_string()
}
