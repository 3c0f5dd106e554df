//! The receiving end of CRIU's page-server protocol, in-process: ferry takes the page stream a
//! `criu dump --page-server` (or `runc checkpoint --page-server`) sends and writes the
//! `pagemap-*.img` and `pages-*.img` images itself, as `criu page-server` would.
//!
//! Why not run `criu page-server`: on a migration destination the pages already pass through
//! ferryd (they arrive in the TLS channel), and handing them on to a second process cost a
//! loopback TCP leg, a splice into a 64 KiB pipe and a copy out of it for every byte; on two
//! cores that made the destination the slowest stage of a dump (measured in bench/).
//!
//! The protocol (CRIU 4.x `criu/page-xfer.c`) is a sequence of 32-byte commands in the sending
//! host's byte order (ferry migrates only between hosts of one architecture), each optionally
//! followed by page data:
//! - `OPEN2(dst_id)`: start the images of one task (or shared-memory segment); answered with one
//!   byte, "a parent image exists" (never, here: ferry does no incremental dumps);
//! - `ADD_F(flags, nr_pages, vaddr)`: a pagemap entry, followed by the pages when `PE_PRESENT`;
//! - `PARENT`: answered with an `i32`, 0 (no parent);
//! - `CLOSE`: everything is sent; answered with an `i32` status, 0, once all of it is written.
//!
//! Commands a dump never sends to a stop-and-copy destination (`GET`, a lazy transfer's) and
//! entries that point into a parent image are refused with the reason, never half-applied.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::image::IMG_COMMON_MAGIC;
use super::CriuError;

/// Generated from `proto/criu_pagemap.proto`.
mod proto {
    include!(concat!(env!("OUT_DIR"), "/ferry.criu.pagemap.rs"));
}

/// Kind magic of pagemap images (CRIU's `PAGEMAP_MAGIC`; shared memory uses the same).
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;

/// `struct page_server_iov`: u32 command, 4 bytes of padding, u64 pages, u64 address, u64 image id.
const COMMAND_LEN: usize = 32;
const PAGE_SIZE: u64 = 4096;

const PS_IOV_ADD: u32 = 1;
const PS_IOV_HOLE: u32 = 2;
const PS_IOV_OPEN: u32 = 3;
const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_PARENT: u32 = 5;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_GET: u32 = 7;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const PS_CMD_BITS: u32 = 16;

const PS_TYPE_PID: u64 = 1;
const PS_TYPE_SHMEM: u64 = 2;
const PS_TYPE_BITS: u32 = 8;

/// Pagemap entry flags (CRIU's `PE_*`).
const PE_PARENT: u32 = 1 << 0;
const PE_PRESENT: u32 = 1 << 2;

/// `criu page-server` numbers its pages images from here, above what a dump writing into the
/// same directory would use; ferry keeps its numbering.
const FIRST_PAGES_ID: u32 = 0x1_0001;

/// No task maps more than this (2^47 bytes of user address space on x86-64).
const MAX_PAGES: u64 = 1 << 35;

/// What a finished stream delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceivedPages {
    /// Pages written into pages images.
    pub pages: u64,
    /// Pagemap images written (one per task or shared-memory segment).
    pub pagemaps: u32,
}

/// One command of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Command {
    cmd: u32,
    flags: u32,
    nr_pages: u64,
    vaddr: u64,
    dst_id: u64,
}

impl Command {
    fn parse(raw: &[u8; COMMAND_LEN]) -> Command {
        let u32_at = |i: usize| u32::from_ne_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_ne_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let word = u32_at(0);
        Command {
            cmd: word & ((1 << PS_CMD_BITS) - 1),
            flags: word >> PS_CMD_BITS,
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }
}

/// The images of one task (or shared-memory segment) being written.
struct OpenImages {
    dst_id: u64,
    pagemap_path: PathBuf,
    /// The whole pagemap image, written out when the images close (it is small).
    pagemap: Vec<u8>,
    pages_path: PathBuf,
    pages: File,
}

/// Receives one page-server session into an images directory.
pub struct PageReceiver {
    dir: PathBuf,
    command: [u8; COMMAND_LEN],
    /// Bytes of `command` filled so far.
    have: usize,
    /// Page bytes of the current entry still to come.
    pages_left: u64,
    open: Option<OpenImages>,
    next_pages_id: u32,
    closed: bool,
    received: ReceivedPages,
    /// Stream bytes taken so far, to say where a problem was.
    offset: u64,
}

impl std::fmt::Debug for PageReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageReceiver")
            .field("dir", &self.dir)
            .field("offset", &self.offset)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl PageReceiver {
    /// A receiver writing into `dir` (which must exist).
    pub fn new(dir: &Path) -> PageReceiver {
        PageReceiver {
            dir: dir.to_owned(),
            command: [0; COMMAND_LEN],
            have: 0,
            pages_left: 0,
            open: None,
            next_pages_id: FIRST_PAGES_ID,
            closed: false,
            received: ReceivedPages::default(),
            offset: 0,
        }
    }

    /// Takes the next bytes of the stream, in any split; the answers the sender waits for are
    /// appended to `answer`, in order.
    pub fn feed(&mut self, mut bytes: &[u8], answer: &mut Vec<u8>) -> Result<(), CriuError> {
        while !bytes.is_empty() {
            if self.closed {
                return Err(self.bad(format!("{} bytes after the close", bytes.len())));
            }
            if self.pages_left > 0 {
                let n = (self.pages_left.min(bytes.len() as u64)) as usize;
                let (pages, rest) = bytes.split_at(n);
                let open = self.open.as_mut().expect("pages only follow an open entry");
                open.pages
                    .write_all(pages)
                    .map_err(|e| CriuError::io(&open.pages_path, e))?;
                self.pages_left -= n as u64;
                self.offset += n as u64;
                bytes = rest;
                continue;
            }
            let n = (COMMAND_LEN - self.have).min(bytes.len());
            self.command[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            self.offset += n as u64;
            bytes = &bytes[n..];
            if self.have == COMMAND_LEN {
                self.have = 0;
                let command = Command::parse(&self.command);
                self.apply(command, answer)?;
            }
        }
        Ok(())
    }

    /// The sender is done: every image must be complete and closed by its `CLOSE`.
    pub fn finish(mut self) -> Result<ReceivedPages, CriuError> {
        if !self.closed {
            let what = if self.pages_left > 0 {
                format!("{} page bytes short", self.pages_left)
            } else if self.have > 0 {
                "in the middle of a command".to_owned()
            } else {
                "without its close".to_owned()
            };
            return Err(self.bad(format!("the page stream ended {what}")));
        }
        self.close_images()?;
        Ok(self.received)
    }

    fn apply(&mut self, c: Command, answer: &mut Vec<u8>) -> Result<(), CriuError> {
        match c.cmd {
            PS_IOV_OPEN => self.open_images(c.dst_id),
            PS_IOV_OPEN2 => {
                self.open_images(c.dst_id)?;
                answer.push(0); // no parent image
                Ok(())
            }
            PS_IOV_PARENT => {
                answer.extend_from_slice(&0i32.to_ne_bytes());
                Ok(())
            }
            PS_IOV_ADD_F => self.add(c, c.flags),
            PS_IOV_ADD => self.add(c, PE_PRESENT),
            PS_IOV_HOLE => self.add(c, PE_PARENT),
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                self.close_images()?;
                self.closed = true;
                answer.extend_from_slice(&0i32.to_ne_bytes());
                Ok(())
            }
            PS_IOV_GET => Err(self.bad(
                "a request for pages (GET), which only a lazy-pages transfer sends".to_owned(),
            )),
            other => Err(self.bad(format!("unknown command {other:#x}"))),
        }
    }

    fn open_images(&mut self, dst_id: u64) -> Result<(), CriuError> {
        self.close_images()?;
        let id = dst_id >> PS_TYPE_BITS;
        let name = match dst_id & ((1 << PS_TYPE_BITS) - 1) {
            PS_TYPE_PID => format!("pagemap-{id}.img"),
            PS_TYPE_SHMEM => format!("pagemap-shmem-{id}.img"),
            other => return Err(self.bad(format!("unknown image type {other} in {dst_id:#x}"))),
        };
        let pages_id = self.next_pages_id;
        self.next_pages_id += 1;
        let pages_path = self.dir.join(format!("pages-{pages_id}.img"));
        let pages = create(&pages_path)?;
        let mut pagemap = Vec::with_capacity(4096);
        pagemap.extend_from_slice(&IMG_COMMON_MAGIC.to_ne_bytes());
        pagemap.extend_from_slice(&PAGEMAP_MAGIC.to_ne_bytes());
        push_entry(&mut pagemap, &proto::PagemapHead { pages_id });
        self.open = Some(OpenImages {
            dst_id,
            pagemap_path: self.dir.join(name),
            pagemap,
            pages_path,
            pages,
        });
        Ok(())
    }

    fn add(&mut self, c: Command, flags: u32) -> Result<(), CriuError> {
        if flags & PE_PARENT != 0 {
            return Err(self.bad(
                "an entry whose pages are in a parent image; ferry keeps no parent images".into(),
            ));
        }
        if c.nr_pages == 0 || c.nr_pages > MAX_PAGES || !c.vaddr.is_multiple_of(PAGE_SIZE) {
            return Err(self.bad(format!(
                "an entry of {} pages at {:#x}",
                c.nr_pages, c.vaddr
            )));
        }
        // CRIU's server opens the images itself when an entry names others ("IO w/o open").
        if self.open.as_ref().map(|o| o.dst_id) != Some(c.dst_id) {
            self.open_images(c.dst_id)?;
        }
        let open = self.open.as_mut().expect("opened above");
        push_entry(
            &mut open.pagemap,
            &proto::PagemapEntry {
                vaddr: c.vaddr,
                compat_nr_pages: 0,
                in_parent: None,
                flags: Some(flags),
                nr_pages: Some(c.nr_pages),
            },
        );
        if flags & PE_PRESENT != 0 {
            self.pages_left = c.nr_pages * PAGE_SIZE;
            self.received.pages += c.nr_pages;
        }
        Ok(())
    }

    fn close_images(&mut self) -> Result<(), CriuError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        drop(open.pages);
        std::fs::write(&open.pagemap_path, &open.pagemap)
            .map_err(|e| CriuError::io(&open.pagemap_path, e))?;
        self.received.pagemaps += 1;
        Ok(())
    }

    fn bad(&self, problem: String) -> CriuError {
        CriuError::PageStream {
            offset: self.offset,
            problem,
        }
    }
}

/// Appends one image entry: its length, then the protobuf bytes.
fn push_entry(image: &mut Vec<u8>, entry: &impl prost::Message) {
    let len = entry.encoded_len();
    image.extend_from_slice(&(len as u32).to_ne_bytes());
    entry.encode(image).expect("a Vec grows to take any entry");
}

fn create(path: &Path) -> Result<File, CriuError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CriuError::io(path, e))
}

#[cfg(test)]
#[path = "page_receiver_tests.rs"]
mod tests;
