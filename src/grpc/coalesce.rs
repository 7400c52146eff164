//! Gathers a connection's writes so that answers finished together leave
//! together.
//!
//! hyper's HTTP/2 connection task writes and flushes every time it runs,
//! and it runs each time a call hands it an answer: the call's task wakes
//! it, tokio puts it in the worker's LIFO slot, and it runs next, before
//! the other answers ready at the same moment (a journal group's, released
//! at once) have been handed over. Each answer then left in a write system
//! call and a TLS record of its own. Here a flush first yields its turn
//! once: the connection task wakes itself, which puts it at the back of the
//! worker's run queue, and when it runs again everything gathered meanwhile
//! leaves in one write. No timer is involved: the wait is what the tasks
//! ahead of it in the queue take, and nothing when there are none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes gathered before they are written without waiting for a
/// flush. A write at least this large (a big streaming batch's results)
/// is passed straight through, after what was gathered before it. A
/// connection's buffer therefore never grows past twice this (kept for the
/// connection's life; hyper's own HTTP/2 send buffer is larger).
const GATHER_LIMIT: usize = 64 * 1024;

/// A byte stream whose writes are gathered until a flush, and whose flushes
/// yield to the other ready tasks once before writing.
pub struct Coalesced<IO> {
    io: IO,
    gathered: Vec<u8>,
    /// How much of `gathered` has been written to `io`.
    written: usize,
    /// The flush under way has had its one yield.
    yielded: bool,
}

impl<IO> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            gathered: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesced<IO> {
    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.gathered.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.gathered[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.gathered.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes. `Ready(true)`: gather them;
    /// `Ready(false)`: they are too many, write them through (nothing
    /// gathered is left ahead of them).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.gathered.len() + len > GATHER_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len < GATHER_LIMIT))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.gathered.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // The slices are copied into one buffer either way; taken together
        // they cost the caller one call instead of one per slice.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gathered.is_empty() {
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        if !this.yielded {
            // Woken by itself while running, a task goes to the back of
            // its worker's queue rather than into the LIFO slot.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.yielded = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use proptest::prelude::*;

    use super::*;

    /// A stream that takes at most `max` bytes per write and answers
    /// `Pending` (waking at once) on the writes and flushes `stalls` says.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        flushed: usize,
        max: Option<usize>,
        stalls: Vec<bool>,
        calls: usize,
    }

    impl Sink {
        fn stall(&mut self, cx: &mut Context<'_>) -> bool {
            let stall = self.stalls.get(self.calls).copied().unwrap_or(false);
            self.calls += 1;
            if stall {
                cx.waker().wake_by_ref();
            }
            stall
        }

        fn received(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            let n = buf.len().min(this.max.unwrap_or(usize::MAX));
            this.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            this.flushed += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (wakes.clone(), Waker::from(wakes))
    }

    /// Polls until ready; every `Pending` here has woken the task.
    fn finish<T>(
        c: &mut Coalesced<Sink>,
        mut op: impl FnMut(Pin<&mut Coalesced<Sink>>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> T {
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            let before = wakes.0.load(Ordering::SeqCst);
            match op(Pin::new(c), &mut cx) {
                Poll::Ready(r) => return r.unwrap(),
                Poll::Pending => assert!(
                    wakes.0.load(Ordering::SeqCst) > before,
                    "pending without a wake-up: the task would hang"
                ),
            }
        }
    }

    fn write(c: &mut Coalesced<Sink>, data: &[u8]) {
        let mut at = 0;
        while at < data.len() {
            at += finish(c, |c, cx| c.poll_write(cx, &data[at..]));
        }
    }

    #[test]
    fn writes_wait_for_the_flush_which_yields_once_then_sends_them_in_one_write() {
        let mut c = Coalesced::new(Sink::default());
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut c).poll_write(&mut cx, b"ab"),
            Poll::Ready(Ok(2))
        ));
        let slices = [io::IoSlice::new(b"cd"), io::IoSlice::new(b"e")];
        assert!(matches!(
            Pin::new(&mut c).poll_write_vectored(&mut cx, &slices),
            Poll::Ready(Ok(3))
        ));
        assert!(c.io.writes.is_empty());

        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the flush wakes its own task"
        );
        assert!(c.io.writes.is_empty(), "nothing written before the yield");
        // Handed over during the yield: leaves with the rest.
        assert!(matches!(
            Pin::new(&mut c).poll_write(&mut cx, b"f"),
            Poll::Ready(Ok(1))
        ));

        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.io.writes, vec![b"abcdef".to_vec()]);
        assert_eq!(c.io.flushed, 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        // The next flush yields again.
        assert!(matches!(
            Pin::new(&mut c).poll_write(&mut cx, b"g"),
            Poll::Ready(Ok(1))
        ));
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.io.received(), b"abcdefg");
    }

    #[test]
    fn a_flush_with_nothing_gathered_neither_yields_nor_writes() {
        let mut c = Coalesced::new(Sink::default());
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert!(c.io.writes.is_empty());
        assert_eq!(c.io.flushed, 1);
    }

    #[test]
    fn a_large_write_passes_through_after_what_was_gathered() {
        let mut c = Coalesced::new(Sink::default());
        write(&mut c, b"small");
        let large = vec![7u8; GATHER_LIMIT];
        write(&mut c, &large);
        assert_eq!(c.io.writes, vec![b"small".to_vec(), large]);
        // Nothing left to flush: no yield.
        let (wakes, waker) = waker();
        assert!(matches!(
            Pin::new(&mut c).poll_flush(&mut Context::from_waker(&waker)),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn gathering_past_the_limit_writes_what_was_gathered_first() {
        let mut c = Coalesced::new(Sink::default());
        let half = vec![1u8; GATHER_LIMIT / 2 + 1];
        write(&mut c, &half);
        assert!(c.io.writes.is_empty());
        write(&mut c, &half);
        assert_eq!(
            c.io.writes,
            vec![half.clone()],
            "the first half went out to make room"
        );
        finish(&mut c, |c, cx| c.poll_flush(cx));
        assert_eq!(c.io.received(), [half.clone(), half].concat());
    }

    #[test]
    fn shutdown_sends_what_is_gathered_first() {
        let mut c = Coalesced::new(Sink::default());
        write(&mut c, b"last words");
        finish(&mut c, |c, cx| c.poll_shutdown(cx));
        assert_eq!(c.io.received(), b"last words");
        assert_eq!(c.io.flushed, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(Vec<u8>),
        Vectored(Vec<Vec<u8>>),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        let bytes = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), GATHER_LIMIT - 10..GATHER_LIMIT + 10),
        ];
        prop_oneof![
            3 => bytes.clone().prop_map(Op::Write),
            1 => proptest::collection::vec(bytes, 0..4).prop_map(Op::Vectored),
            2 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the stream below accepts at a time and however often it
        /// is not ready: bytes arrive whole and in order, and a finished
        /// flush has sent everything written before it.
        #[test]
        fn bytes_arrive_in_order_and_a_flush_sends_everything_before_it(
            ops in proptest::collection::vec(op(), 0..40),
            max in prop_oneof![Just(None), (1usize..5000).prop_map(Some)],
            stalls in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let mut c = Coalesced::new(Sink { max, stalls, ..Sink::default() });
            let mut sent = Vec::new();
            for op in ops {
                match op {
                    Op::Write(data) => {
                        write(&mut c, &data);
                        sent.extend_from_slice(&data);
                    }
                    Op::Vectored(parts) => {
                        let slices: Vec<_> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
                        let n = finish(&mut c, |c, cx| c.poll_write_vectored(cx, &slices));
                        // Gathered whole, or written through in part.
                        let all = parts.concat();
                        sent.extend_from_slice(&all[..n]);
                        write(&mut c, &all[n..]);
                        sent.extend_from_slice(&all[n..]);
                    }
                    Op::Flush => {
                        let flushes = c.io.flushed;
                        finish(&mut c, |c, cx| c.poll_flush(cx));
                        prop_assert_eq!(c.io.received(), sent.clone());
                        prop_assert_eq!(c.io.flushed, flushes + 1);
                    }
                }
            }
            finish(&mut c, |c, cx| c.poll_shutdown(cx));
            prop_assert_eq!(c.io.received(), sent);
        }
    }
}
