//! The kernel side: a socket filter that writes one record per TCP segment the socket receives
//! into a ring buffer shared with this process, and the reader of that ring. The only unsafe
//! code of the crate (system calls, and reads of the shared mapping); everything above it is
//! plain Rust over the records it returns.
//!
//! The filter (an eBPF program of [`PROGRAM_LEN`] instructions, written out below) runs in the
//! kernel for every segment that reaches the socket, before TCP queues it, and:
//! - copies the first 16 bytes of the TCP header and the segment's length, takes the monotonic
//!   clock, and writes the 24-byte [`Segment`] record into the ring with `BPF_RB_NO_WAKEUP`:
//!   nobody is woken (the reader drains the ring when it reads the socket anyway);
//! - accepts the segment whole in every case (it returns `u32::MAX`; a socket filter that
//!   returned less would cut the segment, and 0 would drop it). It never reads the packet with
//!   the old absolute loads, which end the program with 0 (a drop) when out of bounds: it asks
//!   `bpf_skb_load_bytes`, whose failure it checks, and then records nothing;
//! - when the ring is full the record is lost (the reader sees a hole in the sequence numbers
//!   and stamps the bytes it covers as it would without the filter).
//!
//! Loading it needs `CAP_BPF` (or root) where unprivileged eBPF is off (Debian's default):
//! [`RingFilter::attach`] says so in its error, and the caller stamps on read instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One segment as the filter saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The TCP sequence number of the segment's first byte (its SYN for a SYN).
    pub seq: u32,
    /// Bytes of payload (the segment's length less its TCP header).
    pub payload: u32,
    /// The TCP flags byte (SYN is 0x02, FIN 0x01, RST 0x04).
    pub flags: u8,
    /// `CLOCK_MONOTONIC` when the filter ran, in nanoseconds.
    pub at_ns: u64,
}

/// A record's size in the ring (the filter writes exactly this).
const RECORD: usize = 24;

/// The ring's data size: a power of two pages. 64 KiB hold 2,048 records (each 24 bytes and an
/// 8-byte header): a connection read every 100 ms can receive 20,000 segments a second before
/// one is lost.
pub const RING_BYTES: usize = 64 * 1024;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const SO_ATTACH_BPF: libc::c_int = 50;
const RINGBUF_BUSY: u32 = 1 << 31;
const RINGBUF_DISCARD: u32 = 1 << 30;
const RINGBUF_HEADER: usize = 8;

/// Helper numbers (`enum bpf_func_id`).
const FN_KTIME_GET_NS: i32 = 5;
const FN_SKB_LOAD_BYTES: i32 = 26;
const FN_RINGBUF_OUTPUT: i32 = 130;
const BPF_RB_NO_WAKEUP: i32 = 1;

/// The filter's length in instructions (the map load takes two).
pub const PROGRAM_LEN: usize = 26;

/// One eBPF instruction, as the kernel reads it.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used (class | op | source).
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const MOV32_IMM: u8 = 0xb4;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x61;
const STX_W: u8 = 0x63;
const STX_DW: u8 = 0x7b;
const ST_W: u8 = 0x62;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const JNE_IMM: u8 = 0x55;
const PSEUDO_MAP_FD: u8 = 1;

/// The filter (see the module doc). Registers: r1 the packet's context on entry, r6 kept for
/// it, r10 the frame pointer. Stack: the TCP header's first 16 bytes at fp-48, the record at
/// fp-24.
fn program(map: RawFd) -> [Insn; PROGRAM_LEN] {
    let (r0, r1, r2, r3, r4, r6, fp) = (0, 1, 2, 3, 4, 6, 10);
    [
        insn(MOV64_REG, r6, r1, 0, 0),
        // bpf_skb_load_bytes(ctx, 0, fp - 48, 16): the header (the data starts at it).
        insn(MOV64_IMM, r2, 0, 0, 0),
        insn(MOV64_REG, r3, fp, 0, 0),
        insn(ADD64_IMM, r3, 0, 0, -48),
        insn(MOV64_IMM, r4, 0, 0, 16),
        insn(MOV64_REG, r1, r6, 0, 0),
        insn(CALL, 0, 0, 0, FN_SKB_LOAD_BYTES),
        // Failed (a segment shorter than a header): record nothing, accept it.
        insn(JNE_IMM, r0, 0, 16, 0),
        // record[0..4] = the sequence number as sent (big-endian bytes 4..8 of the header)
        insn(LDX_W, r1, fp, -44, 0),
        insn(STX_W, fp, r1, -24, 0),
        // record[4..8] = the segment's length (header included): the context's first field
        insn(LDX_W, r1, r6, 0, 0),
        insn(STX_W, fp, r1, -20, 0),
        // record[8..12] = header bytes 12..16 (data offset, flags, window)
        insn(LDX_W, r1, fp, -36, 0),
        insn(STX_W, fp, r1, -16, 0),
        insn(ST_W, fp, 0, -12, 0),
        // record[16..24] = the monotonic clock
        insn(CALL, 0, 0, 0, FN_KTIME_GET_NS),
        insn(STX_DW, fp, r0, -8, 0),
        // bpf_ringbuf_output(map, fp - 24, 24, BPF_RB_NO_WAKEUP); its failure is the reader's
        // hole
        insn(LD_IMM64, r1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, r2, fp, 0, 0),
        insn(ADD64_IMM, r2, 0, 0, -(RECORD as i32)),
        insn(MOV64_IMM, r3, 0, 0, RECORD as i32),
        insn(MOV64_IMM, r4, 0, 0, BPF_RB_NO_WAKEUP),
        insn(CALL, 0, 0, 0, FN_RINGBUF_OUTPUT),
        // Accept the whole segment.
        insn(MOV32_IMM, r0, 0, 0, -1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// `bpf(cmd, attr, size)`.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 18]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised, 8-aligned buffer of 144 bytes (the kernel's
    // `union bpf_attr` for these commands fits in it, and the size passed says how much of it to
    // read); any pointers written into it point to live buffers the caller keeps until the call
    // returns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of these commands is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn put_u32(attr: &mut [u64; 18], at: usize, value: u32) {
    let word = &mut attr[at / 8];
    let shift = (at % 8) * 8;
    *word = (*word & !(0xffff_ffffu64 << shift)) | (u64::from(value) << shift);
}

/// The filter attached to one socket and the ring it writes: read with [`RingFilter::drain`].
#[derive(Debug)]
pub struct RingFilter {
    /// The ring's descriptor (the mappings hold it too).
    _map: OwnedFd,
    /// The consumer's page (read-write), then the producer's page and the data mapped twice
    /// (read-only).
    consumer: Mapping,
    producer: Mapping,
    mask: u64,
    /// The page size: the data start in the producer's mapping (taken once, not per drain).
    page: usize,
}

#[derive(Debug)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned by one `RingFilter`; the memory it points to is the kernel's
// ring, which may be read from any thread.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

fn map_ring(fd: &OwnedFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh shared mapping of the ring's descriptor at the offsets the kernel
    // documents for ring buffers; nothing else refers to the returned address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapping { ptr, len })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

impl RingFilter {
    /// Makes a ring and a filter writing into it and attaches the filter to `socket`. Attach
    /// before the socket connects, so the first record is the peer's SYN (the sequence numbers'
    /// origin). Errors: the kernel refused (no `CAP_BPF`, no ring buffers before Linux 5.8, the
    /// verifier's log in the message).
    pub fn attach(socket: RawFd) -> io::Result<RingFilter> {
        let mut attr = [0u64; 18];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_RINGBUF);
        put_u32(&mut attr, 12, RING_BYTES as u32);
        let map = bpf(BPF_MAP_CREATE, &mut attr)?;

        let insns = program(map.as_raw_fd());
        let license = c"Dual MIT/GPL";
        let mut log = vec![0u8; 16 * 1024];
        let mut attr = [0u64; 18];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SOCKET_FILTER);
        put_u32(&mut attr, 4, insns.len() as u32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        put_u32(&mut attr, 24, 1);
        put_u32(&mut attr, 28, log.len() as u32);
        attr[4] = log.as_mut_ptr() as u64;
        let prog = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            match last {
                Some(line) => io::Error::new(e.kind(), format!("{e} (verifier: {line})")),
                None => e,
            }
        })?;

        let fd = prog.as_raw_fd();
        // SAFETY: `fd` is a live descriptor and the option's value is the 4 bytes it points to.
        let attached = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                SO_ATTACH_BPF,
                (&fd as *const RawFd).cast(),
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if attached != 0 {
            return Err(io::Error::last_os_error());
        }
        // The socket holds the program now; its descriptor can go.
        drop(prog);

        let page = page_size();
        let consumer = map_ring(&map, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = map_ring(&map, page + 2 * RING_BYTES, libc::PROT_READ, page)?;
        Ok(RingFilter {
            _map: map,
            consumer,
            producer,
            mask: RING_BYTES as u64 - 1,
            page,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write, page-aligned, for as long as `self`;
        // its first 8 bytes are the consumer position, which only this process writes.
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, the producer page's first 8 bytes (the kernel writes them).
        unsafe { &*(self.producer.ptr as *const AtomicU64) }
    }

    /// Hands `each` every record the filter wrote since the last drain, oldest first, and frees
    /// their room in the ring. Never blocks; costs no system call.
    pub fn drain(&mut self, mut each: impl FnMut(Segment)) {
        let page = self.page;
        let data = self.producer.ptr as *const u8;
        let mut consumer = self.consumer_pos().load(Ordering::Acquire);
        let producer = self.producer_pos().load(Ordering::Acquire);
        while consumer < producer {
            let at = page + (consumer & self.mask) as usize;
            // SAFETY: `at` is inside the first copy of the data (mask < RING_BYTES), 8-aligned
            // (records are padded to 8 bytes), and the header's length word is written by the
            // kernel with release order once the record is complete.
            let header = unsafe { &*(data.add(at) as *const AtomicU32) }.load(Ordering::Acquire);
            if header & RINGBUF_BUSY != 0 {
                break;
            }
            let len = (header & !(RINGBUF_BUSY | RINGBUF_DISCARD)) as usize;
            if header & RINGBUF_DISCARD == 0 && len == RECORD {
                let mut record = [0u8; RECORD];
                // SAFETY: the record's bytes follow its header; the data is mapped twice in a
                // row, so a record that wraps is contiguous in the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.add(at + RINGBUF_HEADER),
                        record.as_mut_ptr(),
                        RECORD,
                    );
                }
                each(Segment::from_record(&record));
            }
            consumer += (len + RINGBUF_HEADER).next_multiple_of(8) as u64;
            self.consumer_pos().store(consumer, Ordering::Release);
        }
    }
}

impl Segment {
    fn from_record(record: &[u8; RECORD]) -> Segment {
        let word = |at: usize| [record[at], record[at + 1], record[at + 2], record[at + 3]];
        let length = u32::from_ne_bytes(word(4));
        let header = u32::from(record[8] >> 4) * 4;
        let mut at = [0u8; 8];
        at.copy_from_slice(&record[16..24]);
        Segment {
            seq: u32::from_be_bytes(word(0)),
            payload: length.saturating_sub(header),
            flags: record[9],
            at_ns: u64::from_ne_bytes(at),
        }
    }
}
