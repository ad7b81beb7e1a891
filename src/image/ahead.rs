//! A reader that reads its source in a second thread, a few chunks ahead of its caller: a layer
//! blob's digest check and its decompression run on one core while the tar entries are parsed,
//! hashed and written on the other. The bytes, their order and every error (after the bytes
//! before it, and again on every later read) are the source's; at most `DEPTH + 2` chunks of
//! `CHUNK` bytes are held. Dropping the reader stops the thread at its next chunk and waits for
//! it, so nothing reads a blob after the read that wanted it is over.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::thread::JoinHandle;

/// Bytes a message carries, and how many messages may wait.
const CHUNK: usize = 128 << 10;
const DEPTH: usize = 4;

/// A filled chunk (the buffer, always `CHUNK` long, and how much of it holds data; 0: the end),
/// or the source's error.
type Msg = io::Result<(Vec<u8>, usize)>;

pub(super) struct Ahead {
    rx: Option<Receiver<Msg>>,
    /// Spent buffers, back to the thread (so a blob costs a few allocations, not one a chunk).
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    /// Where the stream stopped: `None` while it runs, `Some(None)` at its end, `Some(Some(e))`
    /// at the error (its kind and text, repeated to every later read).
    stopped: Option<Option<(io::ErrorKind, String)>>,
    thread: Option<JoinHandle<()>>,
}

/// `src`, read ahead in its own thread.
pub(super) fn ahead(mut src: Box<dyn Read + Send>) -> io::Result<Ahead> {
    let (tx, rx) = sync_channel::<Msg>(DEPTH);
    let (back, spare) = channel::<Vec<u8>>();
    let thread = std::thread::Builder::new()
        .name("mwx-read-ahead".into())
        .spawn(move || loop {
            let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let mut n = 0;
            let mut end = false;
            let mut err = None;
            while n < CHUNK {
                match src.read(&mut buf[n..]) {
                    Ok(0) => {
                        end = true;
                        break;
                    }
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if n > 0 && tx.send(Ok((buf, n))).is_err() {
                return; // the reader is gone
            }
            if let Some(e) = err {
                let _ = tx.send(Err(e));
                return;
            }
            if end {
                let _ = tx.send(Ok((Vec::new(), 0)));
                return;
            }
        })?;
    Ok(Ahead {
        rx: Some(rx),
        back,
        cur: Vec::new(),
        len: 0,
        pos: 0,
        stopped: None,
        thread: Some(thread),
    })
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.len {
            match &self.stopped {
                Some(None) => return Ok(0),
                Some(Some((kind, text))) => return Err(io::Error::new(*kind, text.clone())),
                None => {}
            }
            if !self.cur.is_empty() {
                let _ = self.back.send(std::mem::take(&mut self.cur));
            }
            let next = match &self.rx {
                Some(rx) => rx.recv(),
                None => return Ok(0),
            };
            match next {
                Ok(Ok((_, 0))) => self.stopped = Some(None),
                Ok(Ok((buf, n))) => (self.cur, self.len, self.pos) = (buf, n, 0),
                Ok(Err(e)) => {
                    self.stopped = Some(Some((e.kind(), e.to_string())));
                    return Err(e);
                }
                Err(_) => {
                    let e = (
                        io::ErrorKind::Other,
                        "the thread reading ahead stopped before the end".to_string(),
                    );
                    self.stopped = Some(Some(e.clone()));
                    return Err(io::Error::new(e.0, e.1));
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // The thread's next send fails once the receiver is gone, and it returns.
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A source that gives its bytes in the read sizes it is told, then an error or its end.
    struct Src {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        fail: Option<&'static str>,
    }

    impl Read for Src {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.fail {
                    Some(m) => Err(io::Error::new(io::ErrorKind::InvalidData, m)),
                    None => Ok(0),
                };
            }
            let s = self.sizes[self.at % self.sizes.len()].max(1);
            let n = buf.len().min(s).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn src(len: usize, sizes: Vec<usize>, fail: Option<&'static str>) -> Src {
        Src {
            data: (0..len).map(|i| (i * 31 + i / 7) as u8).collect(),
            at: 0,
            sizes,
            fail,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every byte, in order, whatever the source's and the caller's read sizes, across
        /// chunk boundaries; then the end, again and again.
        #[test]
        fn reads_the_source_whole_and_in_order(
            len in prop_oneof![0usize..3000, (CHUNK - 3)..(CHUNK + 3), (3 * CHUNK)..(3 * CHUNK + 5000)],
            sizes in proptest::collection::vec(1usize..100_000, 1..6),
            out in 1usize..70_000,
        ) {
            let s = src(len, sizes, None);
            let want = s.data.clone();
            let mut r = ahead(Box::new(s)).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0; out];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 { break; }
                got.extend_from_slice(&buf[..n]);
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(r.read(&mut buf).unwrap(), 0);
        }
    }

    #[test]
    fn an_error_comes_after_the_bytes_before_it_and_on_every_read_after() {
        let s = src(
            CHUNK + 10,
            vec![4096],
            Some("the blob does not match its digest"),
        );
        let mut r = ahead(Box::new(s)).unwrap();
        let mut got = Vec::new();
        let e = std::io::copy(&mut r, &mut got).unwrap_err();
        assert_eq!(got.len(), CHUNK + 10, "the bytes before the error");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("does not match its digest"), "{e}");
        let again = r.read(&mut [0; 16]).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
        assert!(again.to_string().contains("does not match its digest"));
    }

    #[test]
    fn a_reader_dropped_early_stops_its_thread() {
        // An endless source: the drop returns only because the thread stops at its next send.
        let mut r = ahead(Box::new(io::repeat(7))).unwrap();
        let mut buf = [0; 1000];
        r.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        drop(r);
    }

    #[test]
    fn a_source_that_panics_is_an_error_not_an_end() {
        struct Boom;
        impl Read for Boom {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("decoder bug");
            }
        }
        let mut r = ahead(Box::new(Boom)).unwrap();
        let e = r.read(&mut [0; 8]).unwrap_err();
        assert!(e.to_string().contains("stopped before the end"), "{e}");
    }
}
