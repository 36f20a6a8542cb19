//! Loom models of [`RwLock`].

use std::pin::pin;

use loom::future::block_on;
// std `Arc`: the owned guards take `std::sync::Arc<RwLock>`. Its count is not
// modelled, but every access it guards goes through the modelled semaphore.
use loom::sync::atomic::AtomicUsize;
use loom::sync::atomic::Ordering::SeqCst;
use loom::thread;
use std::sync::Arc;

use super::poll_once;
use crate::local::{OwnedRwLockWriteGuard, RwLock, RwLockReadGuard};

/// Who is inside, to catch overlaps.
#[derive(Default)]
struct Inside {
    readers: AtomicUsize,
    writers: AtomicUsize,
}

impl Inside {
    fn read(&self) {
        self.readers.fetch_add(1, SeqCst);
        assert_eq!(self.writers.load(SeqCst), 0, "a reader overlaps a writer");
        self.readers.fetch_sub(1, SeqCst);
    }

    fn write(&self) {
        assert_eq!(self.writers.fetch_add(1, SeqCst), 0, "two writers overlap");
        assert_eq!(self.readers.load(SeqCst), 0, "a writer overlaps a reader");
        self.writers.fetch_sub(1, SeqCst);
    }
}

/// Two writers and a reader: a writer never overlaps anyone; the data sees
/// both writes.
#[test]
fn writer_never_overlaps() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let inside = Arc::new(Inside::default());
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (lock, inside) = (lock.clone(), inside.clone());
                thread::spawn(move || {
                    let mut guard = block_on(lock.write());
                    inside.write();
                    *guard += 1;
                })
            })
            .collect();
        {
            let guard = block_on(lock.read());
            inside.read();
            assert!(*guard <= 2);
        }
        for t in writers {
            t.join().unwrap();
        }
        assert_eq!(*block_on(lock.read()), 2);
    });
}

/// Two readers and a writer with blocking and async callers mixed.
#[test]
fn readers_share_writer_excludes_blocking_mix() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(()));
        let inside = Arc::new(Inside::default());
        let reader = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let _guard = lock.blocking_read();
                inside.read();
            })
        };
        let writer = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let _guard = lock.clone().blocking_write_owned();
                inside.write();
            })
        };
        {
            let _guard = block_on(lock.clone().read_owned());
            inside.read();
        }
        reader.join().unwrap();
        writer.join().unwrap();
        assert!(!lock.is_locked());
    });
}

/// A queued writer is granted once the reader leaves, and a reader that
/// comes after it does not overtake it.
#[test]
fn waiting_writer_is_granted_before_later_readers() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let first_reader = lock.clone().try_read_owned().unwrap();
        let mut write = pin!(lock.write());
        assert!(poll_once(&mut write).is_pending());
        // The writer is queued: newcomers wait behind it.
        assert!(lock.try_read().is_err());
        let late_reader = {
            let lock = lock.clone();
            thread::spawn(move || *block_on(lock.read()))
        };
        let leaving = thread::spawn(move || drop(first_reader));
        {
            let mut guard = block_on(write);
            *guard = 1;
        }
        leaving.join().unwrap();
        assert_eq!(
            late_reader.join().unwrap(),
            1,
            "a later reader overtook the writer"
        );
    });
}

/// A queued writer that is cancelled lets the readers behind it in.
#[test]
fn cancelled_writer_lets_readers_in() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(()));
        let reader = lock.clone().try_read_owned().unwrap();
        let (queued_tx, queued_rx) = loom::sync::mpsc::channel::<()>();
        let writer = {
            let lock = lock.clone();
            thread::spawn(move || {
                let mut write = pin!(lock.write());
                assert!(poll_once(&mut write).is_pending());
                queued_tx.send(()).unwrap();
                // Dropped here: cancelled while queued (maybe partly served).
            })
        };
        queued_rx.recv().unwrap();
        let late_reader = {
            let lock = lock.clone();
            thread::spawn(move || drop(block_on(lock.read())))
        };
        late_reader.join().unwrap();
        writer.join().unwrap();
        drop(reader);
        assert!(lock.try_write().is_ok());
    });
}

/// A downgraded writer lets readers in but not writers, and the write it
/// made before downgrading is what everyone after it sees.
#[test]
fn downgrade_keeps_writers_out() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let inside = Arc::new(Inside::default());
        let mut guard = lock.try_write().unwrap();
        *guard = 1;
        let other_writer = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let mut guard = lock.blocking_write();
                inside.write();
                assert_eq!(*guard, 1);
                *guard = 2;
            })
        };
        let reader = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let guard = block_on(lock.read());
                inside.read();
                assert!(*guard >= 1);
            })
        };
        let read = guard.downgrade();
        inside.readers.fetch_add(1, SeqCst);
        assert_eq!(inside.writers.load(SeqCst), 0);
        assert_eq!(*read, 1);
        inside.readers.fetch_sub(1, SeqCst);
        drop(read);
        other_writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(*lock.try_read().unwrap(), 2);
    });
}

/// A write guard mapped to a part and moved to another thread keeps every
/// permit until it is dropped there: a reader (also mapped) never overlaps
/// it, and sees its write.
#[test]
fn mapped_guards_keep_their_permits() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new((0usize, 0usize)));
        let inside = Arc::new(Inside::default());
        let part =
            OwnedRwLockWriteGuard::map(lock.clone().try_write_owned().unwrap(), |t| &mut t.1);
        let writer = {
            let inside = inside.clone();
            thread::spawn(move || {
                let mut part = part;
                inside.write();
                *part = 1;
                // Dropped here, on this thread.
            })
        };
        {
            let second = RwLockReadGuard::map(block_on(lock.read()), |t| &t.1);
            inside.read();
            assert_eq!(
                *second, 1,
                "the reader got in before the mapped writer left"
            );
        }
        writer.join().unwrap();
        assert!(!lock.is_locked());
    });
}

/// An owned write guard downgraded and moved to another thread lets a
/// reader in but not a writer, and the write before it is seen by both.
#[test]
fn owned_downgrade_keeps_writers_out() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let inside = Arc::new(Inside::default());
        let mut guard = lock.clone().try_write_owned().unwrap();
        *guard = 1;
        let other_writer = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let mut guard = block_on(lock.write());
                inside.write();
                assert_eq!(*guard, 1);
                *guard = 2;
            })
        };
        let read = guard.downgrade();
        let holder = {
            let inside = inside.clone();
            thread::spawn(move || {
                inside.readers.fetch_add(1, SeqCst);
                assert_eq!(inside.writers.load(SeqCst), 0);
                assert_eq!(*read, 1);
                inside.readers.fetch_sub(1, SeqCst);
            })
        };
        holder.join().unwrap();
        other_writer.join().unwrap();
        assert_eq!(*lock.try_read().unwrap(), 2);
    });
}

/// Readers leaving while a writer queues bank their permits without the
/// lock, racing with the writer taking the free permits, setting `QUEUED`
/// and storing its need. Whichever comes last (the release that completes
/// the bank, or the writer's drain after storing its need) serves it: the
/// writer gets in, after both readers.
#[test]
fn leaving_readers_bank_for_a_queueing_writer() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let inside = Arc::new(Inside::default());
        let first = lock.clone().try_read_owned().unwrap();
        let second = lock.clone().try_read_owned().unwrap();
        inside.readers.fetch_add(2, SeqCst);
        let writer = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                let mut guard = block_on(lock.write());
                inside.write();
                *guard += 1;
            })
        };
        let leaver = {
            let inside = inside.clone();
            thread::spawn(move || {
                inside.readers.fetch_sub(1, SeqCst);
                drop(second);
            })
        };
        inside.readers.fetch_sub(1, SeqCst);
        drop(first);
        leaver.join().unwrap();
        writer.join().unwrap();
        assert_eq!(*lock.try_read().unwrap(), 1);
    });
}

/// A queued writer is cancelled while a reader it waits for leaves: the
/// permits banked for it, and the share it was assigned, go to the reader
/// queued behind it (or back to the counter), none lost.
#[test]
fn cancelled_writer_hands_the_bank_on() {
    loom::model(|| {
        let lock = Arc::new(RwLock::new(()));
        let first = lock.clone().try_read_owned().unwrap();
        let second = lock.clone().try_read_owned().unwrap();
        let (queued_tx, queued_rx) = loom::sync::mpsc::channel::<()>();
        let writer = {
            let lock = lock.clone();
            thread::spawn(move || {
                let mut write = pin!(lock.write());
                assert!(poll_once(&mut write).is_pending());
                queued_tx.send(()).unwrap();
                // Dropped here: cancelled while queued.
            })
        };
        queued_rx.recv().unwrap();
        let leaver = thread::spawn(move || drop(first));
        drop(block_on(lock.read()));
        drop(second);
        leaver.join().unwrap();
        writer.join().unwrap();
        assert!(lock.try_write().is_ok());
    });
}
