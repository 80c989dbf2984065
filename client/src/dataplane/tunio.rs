//! Batched I/O on the TUN device. The shell reads and writes packets in batches through
//! [`TunIo`]; how a batch maps to system calls is the implementation's business.
//!
//! [`VnetTun`] opens the device with `IFF_VNET_HDR`: its writes coalesce same-flow TCP segments
//! into super-packets ([`super::gro`]); its reads are one packet each. TSO on the read side
//! (`TUNSETOFFLOAD`, one `read` returning a 64 KiB super-packet to split) slots into its
//! `recv_batch`.

use super::gro::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Packets stored back to back in one buffer that grows to its working size once and is then
/// reused: no allocation or zeroing per packet.
pub struct PacketBatch {
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    used: usize,
    /// End offset of each packet in `buf`.
    ends: Vec<usize>,
    max_packets: usize,
}

impl PacketBatch {
    /// Room for `max_packets` packets; `bytes` is the expected total size.
    pub fn new(max_packets: usize, bytes: usize) -> Self {
        PacketBatch {
            buf: vec![0; bytes],
            used: 0,
            ends: Vec::with_capacity(max_packets),
            max_packets: max_packets.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.ends.len() >= self.max_packets
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.ends.clear();
    }

    fn spare(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < self.used + len {
            self.buf.resize(self.used + len, 0);
        }
        &mut self.buf[self.used..self.used + len]
    }

    /// Append a copy of `pkt`.
    pub fn push(&mut self, pkt: &[u8]) {
        self.spare(pkt.len()).copy_from_slice(pkt);
        self.used += pkt.len();
        self.ends.push(self.used);
    }

    /// Append a packet written by `fill` into `max_len` spare bytes; `fill` returns how many
    /// bytes it wrote, or an error (then nothing is appended).
    pub fn push_with(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let n = fill(self.spare(max_len))?.min(max_len);
        self.used += n;
        self.ends.push(self.used);
        Ok(n)
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let p = &self.buf[start..end];
            start = end;
            p
        })
    }
}

/// Batched, non-blocking access to a TUN device.
pub trait TunIo {
    /// Append up to `max` of the packets waiting on the device to `batch` (fewer if it fills).
    /// Returns how many were read; `WouldBlock` when none was waiting.
    fn recv_batch(&self, batch: &mut PacketBatch, max: usize) -> io::Result<usize>;

    /// Write the packets of `batch` in order, then empty it. A packet the device refuses is
    /// dropped (and counted in the return value); the others are still written.
    fn send_batch(&self, batch: &mut PacketBatch) -> usize;

    /// Wait until the device may have packets to read.
    async fn readable(&self) -> io::Result<()>;

    /// Reads dropped as malformed since the last call.
    fn take_malformed(&self) -> u64;

    /// Whether the device still exists: an error when the descriptor lost it. Needed
    /// because a deletion may wake no reader (the wake-up can come before the detach, and
    /// the read then finds nothing and clears readiness).
    fn probe(&self) -> io::Result<()>;
}

/// `TUNGETIFF` (`_IOR('T', 210, unsigned int)`), not in the libc crate: fails with `EBADFD`
/// once the device is gone.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// Length of the packet in a read of `read` bytes (header included), or `None` when the read
/// holds no packet: shorter than the header, or only the header.
fn packet_len(read: usize) -> Option<usize> {
    read.checked_sub(VNET_HDR_LEN).filter(|&n| n > 0)
}

/// A TUN device opened with `IFF_VNET_HDR`: every read and write carries a `virtio_net_hdr`.
pub struct VnetTun {
    dev: AsyncFd<tun::Device>,
    gro: Mutex<Coalescer>,
    /// Reads dropped because they held no packet we can take.
    malformed: AtomicU64,
}

impl VnetTun {
    /// `dev` must be non-blocking, opened with `IFF_VNET_HDR`, and registered for readability.
    pub fn new(dev: AsyncFd<tun::Device>) -> Self {
        VnetTun {
            dev,
            gro: Mutex::new(Coalescer::default()),
            malformed: AtomicU64::new(0),
        }
    }

    /// One `readv` of header and packet.
    fn read_one(&self, hdr: &mut [u8; VNET_HDR_LEN], buf: &mut [u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs point into live, writable buffers of the stated lengths.
        let n = unsafe { libc::readv(self.dev.get_ref().as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = packet_len(n as usize).ok_or(io::ErrorKind::InvalidData)?;
        if !gro::finish_read(&VnetHdr::read(hdr), &mut buf[..n]) {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(n)
    }
}

impl TunIo for VnetTun {
    fn recv_batch(&self, batch: &mut PacketBatch, max: usize) -> io::Result<usize> {
        let mut n = 0;
        let mut hdr = [0u8; VNET_HDR_LEN];
        while n < max && !batch.is_full() {
            let r = self.dev.try_io(Interest::READABLE, |_| {
                batch.push_with(65_535, |buf| self.read_one(&mut hdr, buf))
            });
            match r {
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("TUN handed out a packet we cannot take; dropped");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn send_batch(&self, batch: &mut PacketBatch) -> usize {
        let mut gro = self.gro.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        let mut write = |w: &[u8]| {
            if let Err(e) = self.dev.get_ref().send(w) {
                dropped += 1;
                tracing::trace!(error = %e, "TUN write failed");
            }
        };
        for p in batch.iter() {
            gro.push(p, &mut write);
        }
        gro.flush(&mut write);
        batch.clear();
        dropped
    }

    async fn readable(&self) -> io::Result<()> {
        self.dev.readable().await.map(|_| ())
    }

    fn take_malformed(&self) -> u64 {
        self.malformed.swap(0, Ordering::Relaxed)
    }

    fn probe(&self) -> io::Result<()> {
        // Room for a `struct ifreq` (40 bytes), which the call fills in.
        let mut ifr = [0u8; 64];
        // SAFETY: TUNGETIFF writes at most a `struct ifreq` into the live buffer.
        let r = unsafe {
            libc::ioctl(
                self.dev.get_ref().as_raw_fd(),
                TUNGETIFF as _,
                ifr.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keeps_packets_apart_and_in_order() {
        let mut b = PacketBatch::new(3, 100);
        b.push(b"one");
        b.push_with(100, |buf| {
            buf[..3].copy_from_slice(b"two");
            Ok(3)
        })
        .unwrap();
        assert!(b
            .push_with(100, |_| Err(io::ErrorKind::WouldBlock.into()))
            .is_err());
        b.push(b"three");
        assert!(b.is_full());
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            vec![&b"one"[..], b"two", b"three"]
        );
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn a_read_without_a_packet_after_the_header_is_not_a_packet() {
        assert_eq!(packet_len(0), None);
        assert_eq!(packet_len(VNET_HDR_LEN - 1), None);
        assert_eq!(packet_len(VNET_HDR_LEN), None);
        assert_eq!(packet_len(VNET_HDR_LEN + 1), Some(1));
        assert_eq!(packet_len(VNET_HDR_LEN + 1420), Some(1420));
    }
}
