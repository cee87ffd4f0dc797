//! Byte-level access to a map of any key and value size through the `bpf` syscall, with the
//! kernel's batched operations (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, Linux 5.6+):
//! aya 0.14 has typed maps only and no batched operations, and migrating a table of 768Ki
//! entries one `get_next_key` + `lookup` + `update` at a time takes three syscalls per entry.

use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `BPF_ANY`: create or overwrite.
pub(crate) const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub(crate) const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: overwrite only.
pub(crate) const BPF_EXIST: u64 = 2;

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 4096;

/// The `map_elem` part of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `batch` part of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix for `cmd` whose pointers point at
    // buffers that outlive the call and are as large as the map's key/value sizes times the
    // count given; the kernel reads at most `size_of::<T>()` bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A map's entries as bytes: `keys` and `values` hold `len()` entries of `key_size` and
/// `value_size` bytes back to back.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    pub key_size: usize,
    pub value_size: usize,
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
}

impl Entries {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.keys.len().checked_div(self.key_size).unwrap_or(0)
    }

    /// Entry `i`'s key and value.
    pub fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let k = self.keys.get(i * self.key_size..(i + 1) * self.key_size)?;
        let v = self
            .values
            .get(i * self.value_size..(i + 1) * self.value_size)?;
        Some((k, v))
    }
}

/// Every entry of the hash map `fd` (a live map: entries written meanwhile may or may not be in).
pub(crate) fn read_all(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
) -> std::io::Result<Entries> {
    let mut out = Entries {
        key_size,
        value_size,
        ..Entries::default()
    };
    // The batch token is a bucket index for hash maps (u32); room for a key covers arrays too.
    let token_len = key_size.max(8);
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut chunk = BATCH;
    let mut first = true;
    // Bounded: each call returns at least one entry or ends the scan (ENOENT).
    loop {
        let (mut keys, mut values) = (vec![0u8; chunk * key_size], vec![0u8; chunk * value_size]);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd_u32(fd),
            elem_flags: 0,
            flags: 0,
        };
        let res = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count as usize;
        match res {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                // One bucket holds more than `chunk` entries.
                chunk *= 2;
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        out.keys
            .extend_from_slice(keys.get(..got * key_size).unwrap_or_default());
        out.values
            .extend_from_slice(values.get(..got * value_size).unwrap_or_default());
        if res.is_err() {
            return Ok(out); // ENOENT: the scan is complete
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Writes the entries of `e` into `fd` with `flags` in batches; returns how many were
/// written before an error (with the error), or all of them.
pub(crate) fn write_batch(
    fd: BorrowedFd<'_>,
    e: &Entries,
    flags: u64,
) -> (usize, Option<std::io::Error>) {
    let mut done = 0;
    while done < e.len() {
        let n = (e.len() - done).min(BATCH);
        let keys = e
            .keys
            .get(done * e.key_size..(done + n) * e.key_size)
            .unwrap_or_default();
        let values = e
            .values
            .get(done * e.value_size..(done + n) * e.value_size)
            .unwrap_or_default();
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(n).unwrap_or(u32::MAX),
            map_fd: fd_u32(fd),
            elem_flags: flags,
            flags: 0,
        };
        let res = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += attr.count as usize;
        if let Err(err) = res {
            return (done, Some(err));
        }
    }
    (done, None)
}

/// Writes one entry with `flags`.
pub(crate) fn update(
    fd: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Reads one entry into `value`; `Ok(false)` if the key is absent.
pub(crate) fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> std::io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Deletes one entry; `Ok(false)` if the key was absent.
pub(crate) fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> std::io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd_u32(fd),
        _pad: 0,
        key: key.as_ptr() as u64,
        value: 0,
        flags: 0,
    };
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A file descriptor of the loaded program with id `id` (what a program array's slot reads as).
pub(crate) fn program_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    let mut attr = GetIdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: as in `sys_bpf`; the command returns a new file descriptor on success.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            std::ptr::from_mut(&mut attr),
            size_of::<GetIdAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
