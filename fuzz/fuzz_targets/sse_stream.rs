//! Fuzzes the SSE observer with arbitrary bytes in arbitrary chunkings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgw_core::sse::EventStream;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut stream = EventStream::new();
    let mut events = 0usize;
    for chunk in body.chunks(step) {
        stream.feed(chunk, |_| events += 1);
    }
    let mut whole = EventStream::new();
    let mut events_whole = 0usize;
    whole.feed(body, |_| events_whole += 1);
    assert_eq!(events, events_whole);
});
