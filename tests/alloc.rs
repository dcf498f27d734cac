//! The echo hot path allocates nothing: once a connection is open, a round
//! trip that the socket takes whole costs no heap allocation and no log
//! formatting on the server's thread (logging is off here, as it is above
//! `debug` in production).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use minetd::{Config, Server, Service};

/// Counts the allocations made on the thread that asked to be counted.
struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note_allocation() {
    // `try_with`: the thread-local may be gone while a thread exits.
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: usize = 200;
const MEASURED: usize = 5_000;

#[test]
fn echo_round_trips_allocate_nothing_on_the_server_thread() {
    let mut server = Server::bind(&Config {
        echo: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    })
    .expect("bind");
    let addr = server
        .local_addrs()
        .into_iter()
        .find(|(service, _)| *service == Service::Echo)
        .unwrap()
        .1;
    let stop = server.shutdown_handle();
    // 0: warming up; 1: the client asks the server thread to start
    // counting; 2: counting; 3: the client is done.
    let phase = Arc::new(AtomicUsize::new(0));
    let server_phase = Arc::clone(&phase);
    let serving = thread::spawn(move || {
        while !server
            .turn(Some(Duration::from_millis(5)))
            .unwrap()
            .finished
        {
            if server_phase.load(Ordering::Acquire) == 1 {
                COUNTED.with(|counted| counted.set(true));
                server_phase.store(2, Ordering::Release);
            }
            if server_phase.load(Ordering::Acquire) == 3 {
                COUNTED.with(|counted| counted.set(false));
                server_phase.store(4, Ordering::Release);
            }
        }
    });

    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.set_nodelay(true).unwrap();
    let mut round_trip = |n: usize| {
        let message = [(n % 251) as u8; 64];
        client.write_all(&message).unwrap();
        let mut echoed = [0; 64];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    };
    for n in 0..WARMUP {
        round_trip(n);
    }
    phase.store(1, Ordering::Release);
    while phase.load(Ordering::Acquire) != 2 {
        thread::yield_now();
    }
    for n in 0..MEASURED {
        round_trip(n);
    }
    phase.store(3, Ordering::Release);
    while phase.load(Ordering::Acquire) != 4 {
        thread::yield_now();
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    stop.shutdown();
    serving.join().unwrap();
    assert_eq!(
        allocations, 0,
        "{allocations} allocations on the server thread over {MEASURED} echo round trips"
    );
}
