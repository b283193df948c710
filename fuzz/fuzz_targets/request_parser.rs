//! Fuzzes the incremental request parser: any bytes, split into two chunks at a point
//! the input chooses, with every option combination; also checks that one-chunk and
//! two-chunk parses agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpgw_core::jsonrpc::stream::{MessageParser, Options};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else { return };
    let opts = Options { reject_duplicate_keys: ctl & 1 != 0, stop_when_routable: ctl & 2 != 0, skim: ctl & 4 != 0, settle: ctl & 8 != 0 };
    let cut = usize::from(ctl >> 4) * body.len() / 16;
    let (a, b) = body.split_at(cut.min(body.len()));

    let mut whole = MessageParser::new(opts);
    let r1 = whole.feed(body).map(|_| whole.routable());
    let mut split = MessageParser::new(opts);
    let r2 = split.feed(a).and_then(|p| if p == mcpgw_core::jsonrpc::stream::Progress::Routable { Ok(p) } else { split.feed(b) }).map(|_| split.routable());
    if !opts.stop_when_routable {
        assert_eq!(r1.is_ok(), r2.is_ok());
        assert_eq!(format!("{:?}", whole.finish()), format!("{:?}", split.finish()));
    }
});
