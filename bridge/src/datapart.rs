//! The appliance's data partition grows to fill its disk. The image is
//! built with a small data partition (the last on a GPT disk); written to a
//! larger disk, it would stay that small. At every boot, after init mounts
//! it, `clawosctl grow-data` moves the GPT's backup header to the disk's end,
//! extends the partition to the last usable sector, tells the kernel
//! (BLKPG), and grows the mounted ext4 online (EXT4_IOC_RESIZE_FS): no
//! unmount, no resize2fs in the image. On a disk it already fills, the
//! table is not written; the kernel's view of the partition and the ext4
//! are still brought to the table's size, so a grow cut short (power lost
//! between the steps) is finished at the next boot.
//!
//! The partition table is read and written with `gptman`; the kernel's
//! side is two ioctls that no maintained crate wraps (BLKPG_RESIZE_PARTITION
//! and ext4's resize), made here on the raw interface.

use crate::error::{Code, Failure};
use gptman::GPT;
use std::fs::File;
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What a grow did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// The partition's device, e.g. /dev/vda2.
    pub device: PathBuf,
    /// The partition's size before, bytes (as the kernel saw it).
    pub from_bytes: u64,
    /// Its size now, bytes.
    pub to_bytes: u64,
    /// Whether its ext4 grew (it may alone, finishing a grow cut short).
    pub filesystem_grew: bool,
}

fn failed(what: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Eio, format!("grow-data: {what}"))
}

/// Grow the partition holding the filesystem mounted at `mountpoint`, and
/// the filesystem, to the end of its disk. `None` if it fills it already.
pub fn grow(mountpoint: &Path) -> Result<Option<Grown>, Failure> {
    let st = rustix::fs::stat(mountpoint)
        .map_err(|e| failed(format_args!("stat {}: {e}", mountpoint.display())))?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let read = |name: &str| -> Result<u64, Failure> {
        let path = sys.join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| failed(format_args!("{}: {e}", path.display())))?
            .trim()
            .parse()
            .map_err(|e| failed(format_args!("{}: {e}", path.display())))
    };
    let number = u32::try_from(read("partition").map_err(|_| {
        failed(format_args!(
            "{} is not on a disk partition ({major}:{minor})",
            mountpoint.display()
        ))
    })?)
    .map_err(failed)?;
    let real =
        std::fs::canonicalize(&sys).map_err(|e| failed(format_args!("{}: {e}", sys.display())))?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let (Some(part), Some(disk)) = (name(&real), real.parent().and_then(name)) else {
        return Err(failed(format_args!(
            "{} has no parent disk",
            real.display()
        )));
    };
    let device = PathBuf::from(format!("/dev/{part}"));
    let disk_path = PathBuf::from(format!("/dev/{disk}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| failed(format_args!("open {}: {e}", disk_path.display())))?;
    grow_table(&mut file, number)?;
    // On the disk before the kernel and the filesystem rely on it.
    file.sync_all()
        .map_err(|e| failed(format_args!("sync {}: {e}", disk_path.display())))?;
    let (start, len) = table_extent(&mut file, number)?;
    let seen = read("size")?.saturating_mul(512);
    if seen < len {
        resize_partition(&file, number, start, len)
            .map_err(|e| failed(format_args!("BLKPG resize of {}: {e}", device.display())))?;
    }
    let before = ext4_bytes(mountpoint)?;
    resize_ext4(mountpoint, len)?;
    let filesystem_grew = ext4_bytes(mountpoint)? > before;
    Ok((seen < len || filesystem_grew).then_some(Grown {
        device,
        from_bytes: seen,
        to_bytes: len,
        filesystem_grew,
    }))
}

/// Where partition `number` of the GPT on `disk` starts and how long it
/// is, bytes.
fn table_extent<D>(disk: &mut D, number: u32) -> Result<(u64, u64), Failure>
where
    D: std::io::Read + Seek,
{
    let (gpt, e) = read_table(disk, number)?;
    let sectors = extent(&e)?;
    Ok((e.starting_lba * gpt.sector_size, sectors * gpt.sector_size))
}

/// The GPT on `disk` and its partition `number`.
fn read_table<D>(disk: &mut D, number: u32) -> Result<(GPT, gptman::GPTPartitionEntry), Failure>
where
    D: std::io::Read + Seek,
{
    let gpt = GPT::find_from(disk).map_err(|e| failed(format_args!("no GPT: {e}")))?;
    let entry = gpt
        .iter()
        .find(|(i, e)| *i == number && e.is_used())
        .map(|(_, e)| e.clone())
        .ok_or_else(|| failed(format_args!("the GPT has no partition {number}")))?;
    Ok((gpt, entry))
}

/// How many sectors an entry spans; a corrupt one (end before start) is
/// refused before anything is written.
fn extent(e: &gptman::GPTPartitionEntry) -> Result<u64, Failure> {
    e.ending_lba
        .checked_sub(e.starting_lba)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            failed(format_args!(
                "a corrupt partition entry: it ends (sector {}) before it starts (sector {})",
                e.ending_lba, e.starting_lba
            ))
        })
}

/// The size of the ext4 mounted at `mountpoint`, bytes (its blocks, as
/// statfs counts them).
fn ext4_bytes(mountpoint: &Path) -> Result<u64, Failure> {
    let fs = rustix::fs::statfs(mountpoint)
        .map_err(|e| failed(format_args!("statfs {}: {e}", mountpoint.display())))?;
    Ok((fs.f_blocks as u64).saturating_mul(fs.f_bsize as u64))
}

/// Extend partition `number` of the GPT on `disk` to its last usable
/// sector, the backup header moved to the disk's end. The partition must
/// be the last on the disk. `(start, old length, new length)` in bytes, or
/// `None` if there is nothing to gain.
pub fn grow_table<D>(disk: &mut D, number: u32) -> Result<Option<(u64, u64, u64)>, Failure>
where
    D: std::io::Read + std::io::Write + Seek,
{
    let (mut gpt, entry) = read_table(disk, number)?;
    let ss = gpt.sector_size;
    let old_sectors = extent(&entry)?;
    if gpt
        .iter()
        .any(|(i, e)| i != number && e.is_used() && e.ending_lba > entry.ending_lba)
    {
        return Err(failed(format_args!(
            "partition {number} is not the last on its disk: it cannot grow"
        )));
    }
    gpt.header
        .update_from(disk, ss)
        .map_err(|e| failed(format_args!("the disk's size: {e}")))?;
    let new_end = gpt.header.last_usable_lba;
    if new_end <= entry.ending_lba {
        return Ok(None);
    }
    gpt[number].ending_lba = new_end;
    gpt.write_into(disk)
        .map_err(|e| failed(format_args!("write the GPT: {e}")))?;
    disk.flush()
        .map_err(|e| failed(format_args!("write the GPT: {e}")))?;
    let new_sectors = new_end - entry.starting_lba + 1;
    Ok(Some((
        entry.starting_lba * ss,
        old_sectors * ss,
        new_sectors * ss,
    )))
}

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;
/// `_IOW('f', 16, __u64)` (linux/ext4.h... fs/ext4/ext4.h).
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Tell the kernel partition `number` of `disk` is now `len` bytes from
/// `start` (it may be mounted: BLKRRPART would refuse a disk in use).
#[allow(unsafe_code)]
fn resize_partition(disk: &File, number: u32, start: u64, len: u64) -> std::io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: len as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: BLKPG reads `arg` and the partition it points to, both alive
    // for the call.
    let r = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &arg) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Grow the ext4 mounted at `mountpoint` to `len` bytes, online.
#[allow(unsafe_code)]
fn resize_ext4(mountpoint: &Path, len: u64) -> Result<(), Failure> {
    let dir = File::open(mountpoint)
        .map_err(|e| failed(format_args!("open {}: {e}", mountpoint.display())))?;
    let fs = rustix::fs::fstatfs(&dir)
        .map_err(|e| failed(format_args!("statfs {}: {e}", mountpoint.display())))?;
    if fs.f_type != 0xEF53 {
        return Err(failed(format_args!("{} is not ext4", mountpoint.display())));
    }
    let blocks: u64 = len / fs.f_bsize as u64;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64, alive for the call.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) };
    if r == 0 {
        Ok(())
    } else {
        Err(failed(format_args!(
            "ext4 online resize of {} to {blocks} blocks: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    /// The disk's length in sectors.
    fn sectors<D: Seek>(disk: &mut D) -> u64 {
        disk.seek(std::io::SeekFrom::End(0)).unwrap() / 512
    }

    /// A disk of `len` bytes laid out as the image's: an ESP, then the
    /// data partition up to the backup table, as image/build.sh makes it.
    fn image(len: u64) -> Cursor<Vec<u8>> {
        let mut disk = Cursor::new(vec![0u8; len as usize]);
        let mut gpt = GPT::new_from(&mut disk, 512, [7; 16]).unwrap();
        let esp_end = 2048 + 2048 - 1;
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: esp_end,
            attribute_bits: 0,
            partition_name: "EFI System".into(),
        };
        gpt[2] = gptman::GPTPartitionEntry {
            partition_type_guid: [3; 16],
            unique_partition_guid: [4; 16],
            starting_lba: esp_end + 1,
            ending_lba: gpt.header.last_usable_lba,
            attribute_bits: 0,
            partition_name: "clawfs".into(),
        };
        gpt.write_into(&mut disk).unwrap();
        disk
    }

    #[test]
    fn the_last_partition_grows_to_the_new_end_of_its_disk() {
        let mut disk = image(8 * MIB);
        let before = GPT::find_from(&mut disk).unwrap();
        // The image written to a larger disk.
        disk.get_mut().resize((64 * MIB) as usize, 0);
        let (start, old, new) = grow_table(&mut disk, 2).unwrap().unwrap();
        assert_eq!(start, before[2].starting_lba * 512);
        assert_eq!(
            old,
            (before[2].ending_lba - before[2].starting_lba + 1) * 512
        );
        let after = GPT::find_from(&mut disk).unwrap();
        let last = sectors(&mut disk) - 1;
        // The backup header is the disk's last sector, its table just
        // before it, and the partition ends where the table begins.
        assert_eq!(after.header.backup_lba, last);
        assert_eq!(after.header.last_usable_lba, last - 33);
        assert_eq!(after[2].ending_lba, last - 33);
        assert_eq!(new, (after[2].ending_lba - after[2].starting_lba + 1) * 512);
        assert!(new > 60 * MIB, "{new}");
        // Nothing else moved.
        assert_eq!(after[1], before[1]);
        assert_eq!(after[2].starting_lba, before[2].starting_lba);
        assert_eq!(
            after[2].unique_partition_guid,
            before[2].unique_partition_guid
        );
        // The backup is a valid table too: read from the end alone.
        let mut backup_only = disk.clone();
        backup_only.get_mut()[512..1024].fill(0);
        let from_backup = GPT::find_from(&mut backup_only).unwrap();
        assert_eq!(from_backup[2].ending_lba, last - 33);
        // Once grown, nothing more to do.
        assert_eq!(grow_table(&mut disk, 2).unwrap(), None);
    }

    #[test]
    fn only_the_last_partition_grows_and_only_into_free_space() {
        let mut disk = image(8 * MIB);
        // A disk that did not grow: nothing to do, nothing written.
        let bytes = disk.get_ref().clone();
        assert_eq!(grow_table(&mut disk, 2).unwrap(), None);
        assert_eq!(disk.get_ref(), &bytes);
        disk.get_mut().resize((16 * MIB) as usize, 0);
        let e = grow_table(&mut disk, 1).unwrap_err();
        assert!(e.message.contains("not the last"), "{}", e.message);
        let e = grow_table(&mut disk, 3).unwrap_err();
        assert!(e.message.contains("no partition 3"), "{}", e.message);
        let mut blank = Cursor::new(vec![0u8; MIB as usize]);
        assert!(
            grow_table(&mut blank, 2)
                .unwrap_err()
                .message
                .contains("no GPT")
        );
        // A corrupt entry (ends before it starts) is refused before
        // anything is written.
        let mut gpt = GPT::find_from(&mut disk).unwrap();
        gpt[2].ending_lba = gpt[2].starting_lba - 1;
        let e = extent(&gpt[2]).unwrap_err();
        assert!(e.message.contains("corrupt"), "{}", e.message);
    }
}
