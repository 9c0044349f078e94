//! Bounded fuzzing of everything a provider (or the Claude Code CLI) sends back: the SSE layer
//! ([`sse::events`]), the four wire-format stream parsers (Chat Completions, Responses,
//! Anthropic Messages, Gemini) both through their `Stream` wrappers and as pure state
//! machines, the Claude Code stream-json line parser, and the HTTP error classification
//! ([`ProviderError::from_http`] and the retry policy).
//!
//! Inputs start from the real recorded streams in `shared/fixtures/sse/` (read at test time,
//! never copied) and are mutated structurally:
//! * bytes: truncation (at every byte boundary for short recordings, spread cuts plus cuts
//!   around every line break for long ones), bit flips, SSE/JSON/UTF-8 "interesting" tokens
//!   inserted, ranges deleted or duplicated, ranges spliced in from other wires' recordings,
//!   LF/CRLF/CR rewriting, random network chunk boundaries (1..N bytes, with `Pending` polls
//!   between them), a transport error at a random point;
//! * events: events of all four wires spliced into one stream and fed to any parser, their
//!   JSON mutated at the value level (values replaced by extreme numbers, wrong types, deep
//!   nesting and long strings; keys dropped or renamed; `type` swapped for another event's);
//! * hostile shapes: huge fields, many events, many tool-call indices, invalid UTF-8 followed
//!   by a long body, long lines in small chunks, byte order marks;
//! * the real HTTP path (`Backend::stream` against a scripted local server): random statuses,
//!   content types, bodies, read sizes and broken connections, compared with the in-memory
//!   path for the same bytes.
//!
//! Checked for every input: no panic, no hang (each async run is wrapped in
//! `tokio::time::timeout`, and a watchdog aborts the run and prints the input if one case runs
//! longer than `CONCLAVE_FUZZ_HANG_SECS`, default 30), bounded memory (per-thread allocation
//! counter), bounded output, an error is always the last item, and the result does not depend
//! on how the bytes were split into network reads.
//!
//! Case counts keep the file under ~20 s in debug; `CONCLAVE_FUZZ_CASES=N` runs `N` cases per
//! property and `CONCLAVE_FUZZ_SEED=S` changes the fixed seed, e.g.
//! `CONCLAVE_FUZZ_CASES=20000 cargo test --release -p conclave-agent --test fuzz_streams -- --nocapture`.

mod common;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use conclave_agent::accumulate::TurnOutput;
use conclave_agent::llm::{ChatMessage, ChatRequest, ToolChoice, ToolSpec};
use conclave_agent::providers::claude_code::{ClaudeCodeParser, parse_tool_calls};
use conclave_agent::providers::openai_chat::{ChatStream, ChatStreamParser};
use conclave_agent::providers::openai_responses::{ResponsesStream, ResponsesStreamParser};
use conclave_agent::providers::retry::{RetryPolicy, is_retryable};
use conclave_agent::providers::sse::{self, SseEvent, SseStream};
use conclave_agent::providers::stream::{EventParser, Flow};
use conclave_agent::providers::{Backend, MAX_ERROR_BODY_BYTES, ProviderError, anthropic, gemini};
use conclave_fuzz::{Target, cases, count_input, inputs, peak_growth};
use conclave_protocol::StreamChunk;
use conclave_protocol::config::WireFormat;
use futures::{Stream, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Harness: case counts, fixed seed, watchdog, allocation accounting.
// ---------------------------------------------------------------------------------------------

/// This file's seed and summary words; the harness itself is `conclave_fuzz`'s.
const TARGET: Target = Target {
    file: "fuzz_streams",
    seed: 0xC0C1_A7E0_F4A3_0003,
    verb: "run",
    hits: None,
};

thread_local! {
    /// A current-thread runtime per test thread, so allocations stay on the counted thread.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
}

#[global_allocator]
static ALLOC: conclave_fuzz::CountingAlloc = conclave_fuzz::CountingAlloc;

/// The peak heap growth allowed for parsing `input_len` bytes.
fn memory_bound(input_len: usize) -> usize {
    32 * input_len + 8 * 1024 * 1024
}

// ---------------------------------------------------------------------------------------------
// The four wires.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const WIRES: [Wire; 4] = [Wire::Chat, Wire::Responses, Wire::Anthropic, Wire::Gemini];

impl Wire {
    fn dir(self) -> &'static str {
        match self {
            Wire::Chat => "openai_chat",
            Wire::Responses => "openai_responses",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
        }
    }

    /// The wire's chunk stream over `events`.
    fn stream(self, events: SseStream) -> Pin<Box<dyn Stream<Item = Item> + Send>> {
        match self {
            Wire::Chat => Box::pin(ChatStream::new(events)),
            Wire::Responses => Box::pin(ResponsesStream::new(events)),
            Wire::Anthropic => Box::pin(anthropic::AnthropicStream::new(events)),
            Wire::Gemini => Box::pin(gemini::GeminiStream::new(events)),
        }
    }
}

type Item = Result<StreamChunk, ProviderError>;

/// The pure parser of a wire.
struct Parser(Box<dyn EventParser>);

impl Parser {
    fn new(wire: Wire) -> Self {
        Self(match wire {
            Wire::Chat => Box::new(ChatStreamParser::default()),
            Wire::Responses => Box::new(ResponsesStreamParser::default()),
            Wire::Anthropic => Box::new(anthropic::AnthropicStreamParser::default()),
            Wire::Gemini => Box::new(gemini::GeminiStreamParser::default()),
        })
    }

    /// Handles one event; true when the parser says the stream is over.
    fn on_event(&mut self, event: &SseEvent, out: &mut VecDeque<Item>) -> bool {
        self.0.on_event(event, out) == Flow::Done
    }

    fn on_end(&mut self, out: &mut VecDeque<Item>) {
        self.0.on_end(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------------

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/sse");

struct Fixture {
    wire: Wire,
    name: String,
    body: Vec<u8>,
    /// The body's events as the SSE layer reads them.
    events: Vec<SseEvent>,
}

fn fixtures() -> &'static [Fixture] {
    static ALL: OnceLock<Vec<Fixture>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = Vec::new();
        for wire in WIRES {
            let dir = Path::new(FIXTURES).join(wire.dir());
            let mut paths: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot read the fixtures at {}: {e}", dir.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sse"))
                .collect();
            paths.sort();
            assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
            for path in paths {
                let body =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let events = std::thread::scope(|s| {
                    s.spawn(|| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .expect("runtime");
                        rt.block_on(sse_events(vec![body.clone()]))
                    })
                    .join()
                    .expect("reading a fixture's events")
                });
                all.push(Fixture {
                    wire,
                    name: path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default()
                        .to_owned(),
                    body,
                    events,
                });
            }
        }
        all
    })
}

/// Every event of every fixture, for splicing.
fn all_events() -> &'static [SseEvent] {
    static ALL: OnceLock<Vec<SseEvent>> = OnceLock::new();
    ALL.get_or_init(|| {
        fixtures()
            .iter()
            .flat_map(|f| f.events.iter().cloned())
            .collect()
    })
}

async fn sse_events(pieces: Vec<Vec<u8>>) -> Vec<SseEvent> {
    let bytes = futures::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    sse::events(bytes, "fixture", "file")
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// Driving a byte stream through the SSE layer and a wire's stream.
// ---------------------------------------------------------------------------------------------

/// A byte stream that answers `Pending` (and wakes itself) before some of its pieces, like a
/// network that delivers reads one at a time.
struct Trickle {
    pieces: VecDeque<Result<Vec<u8>, std::io::Error>>,
    pending_pattern: Vec<bool>,
    polls: usize,
    pended: bool,
}

impl Stream for Trickle {
    type Item = Result<Vec<u8>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.polls += 1;
        // Never twice in a row, so every piece is delivered eventually.
        if !this.pended
            && !this.pending_pattern.is_empty()
            && this.pending_pattern[this.polls % this.pending_pattern.len()]
        {
            this.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pended = false;
        Poll::Ready(this.pieces.pop_front())
    }
}

/// How a body reaches the parser.
#[derive(Debug, Clone)]
struct Delivery {
    /// Network read sizes, cycled; empty means the whole body in one read.
    chunk_sizes: Vec<usize>,
    /// Which polls answer `Pending` first, cycled.
    pending_pattern: Vec<bool>,
    /// A transport error after this many pieces (the rest of the body is lost).
    break_after: Option<usize>,
}

impl Delivery {
    fn whole() -> Self {
        Delivery {
            chunk_sizes: Vec::new(),
            pending_pattern: Vec::new(),
            break_after: None,
        }
    }

    fn pieces(&self, body: &[u8]) -> Vec<Vec<u8>> {
        if self.chunk_sizes.is_empty() {
            return vec![body.to_vec()];
        }
        let mut pieces = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = self.chunk_sizes[i % self.chunk_sizes.len()].clamp(1, rest.len());
            pieces.push(rest[..n].to_vec());
            rest = &rest[n..];
            i += 1;
        }
        pieces
    }
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        prop_oneof![
            2 => Just(Vec::new()),
            2 => proptest::collection::vec(1usize..8, 1..6),
            3 => proptest::collection::vec(1usize..300, 1..6),
            1 => proptest::collection::vec(1usize..5000, 1..3),
        ],
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(any::<bool>(), 1..5),
        ],
        proptest::option::weighted(0.15, 0usize..50),
    )
        .prop_map(|(chunk_sizes, pending_pattern, break_after)| Delivery {
            chunk_sizes,
            pending_pattern,
            break_after,
        })
}

/// What a run produced, as comparable text (errors by their message).
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    items: Vec<Result<StreamChunk, String>>,
}

/// Runs `body` through the SSE layer and `wire`'s stream, with every check that holds for
/// any input.
fn run_stream(wire: Wire, body: &[u8], delivery: &Delivery) -> Result<Outcome, TestCaseError> {
    count_input();
    let mut pieces: VecDeque<Result<Vec<u8>, std::io::Error>> =
        delivery.pieces(body).into_iter().map(Ok).collect();
    if let Some(after) = delivery.break_after {
        pieces.truncate(after);
        pieces.push_back(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fuzz: connection reset",
        )));
    }
    let input = Trickle {
        pieces,
        pending_pattern: delivery.pending_pattern.clone(),
        polls: 0,
        pended: false,
    };
    let (result, peak) = peak_growth(|| {
        RUNTIME.with(|rt| {
            rt.block_on(async {
                let stream = wire.stream(sse::events(input, "fuzz", "http://fuzz.invalid"));
                tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<Item>>()).await
            })
        })
    });
    let items = result.map_err(|_| {
        TestCaseError::fail(format!(
            "{wire:?}: the stream of a {}-byte body did not end within 20 s",
            body.len()
        ))
    })?;
    let bound = memory_bound(body.len());
    prop_assert!(
        peak <= bound,
        "{wire:?}: a {}-byte body made the heap grow by {peak} bytes (bound {bound})",
        body.len()
    );
    check_items(&items, body.len())?;
    Ok(Outcome {
        items: items
            .into_iter()
            .map(|item| item.map_err(|e| e.to_string()))
            .collect(),
    })
}

/// Checks that hold for the output of any stream: at most one error and only as the last
/// item, output proportional to the input, errors that display and classify, and chunks the
/// accumulator folds.
fn check_items(items: &[Item], input_len: usize) -> TestCaseResult {
    let mut text_bytes = 0usize;
    let mut turn = TurnOutput::default();
    for (i, item) in items.iter().enumerate() {
        match item {
            Ok(chunk) => {
                text_bytes += chunk_bytes(chunk);
                turn.apply(chunk);
            }
            Err(error) => {
                prop_assert_eq!(
                    i + 1,
                    items.len(),
                    "an error is followed by more items: {:?}",
                    &items[i..]
                );
                prop_assert!(!error.to_string().is_empty());
                let _ = is_retryable(error);
                let _ = RetryPolicy { max_retries: 3 }.delay_with_jitter(0, error, 0.5);
                text_bytes += error.to_string().len();
            }
        }
    }
    let bound = 8 * input_len + 4096;
    prop_assert!(
        text_bytes <= bound,
        "a {input_len}-byte input produced {text_bytes} bytes of output (bound {bound})"
    );
    prop_assert!(items.len() <= input_len + 8, "{} items", items.len());
    Ok(())
}

fn chunk_bytes(chunk: &StreamChunk) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    match chunk {
        StreamChunk::Content { text }
        | StreamChunk::Reasoning { text }
        | StreamChunk::Refusal { text } => text.len(),
        StreamChunk::ReasoningSignature { signature } => signature.len(),
        StreamChunk::ToolCallDelta {
            id,
            name,
            arguments,
            ..
        } => opt(id) + opt(name) + arguments.len(),
        StreamChunk::ToolCall(call) => {
            call.id.len() + call.name.len() + call.arguments.len() + opt(&call.signature)
        }
        StreamChunk::ToolResult { id, name, content } => id.len() + name.len() + content.len(),
        StreamChunk::Usage(_) => 16,
        StreamChunk::Finish { reason } => reason.len(),
        StreamChunk::Error {
            kind,
            message,
            code,
        } => kind.len() + message.len() + opt(code),
    }
}

/// Feeds events to `wire`'s pure parser the way its stream does.
fn run_events(wire: Wire, events: &[SseEvent]) -> Result<Vec<Item>, TestCaseError> {
    count_input();
    let input_len: usize = events
        .iter()
        .map(|e| e.event.len() + e.data.len() + 8)
        .sum();
    let (items, peak) = peak_growth(|| {
        let mut parser = Parser::new(wire);
        let mut out = VecDeque::new();
        let mut done = false;
        for event in events {
            if parser.on_event(event, &mut out) {
                done = true;
                break;
            }
        }
        if !done {
            parser.on_end(&mut out);
        }
        Vec::from(out)
    });
    let bound = memory_bound(input_len);
    prop_assert!(
        peak <= bound,
        "{wire:?}: {input_len} bytes of events made the heap grow by {peak} bytes (bound {bound})"
    );
    check_items(&items, input_len)?;
    Ok(items)
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutations.
// ---------------------------------------------------------------------------------------------

/// Byte strings that mean something to SSE framing, JSON or UTF-8.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"data: ",
    b"data:",
    b"data",
    b"event: error\n",
    b"event: ",
    b"event:message\n",
    b": ping\n\n",
    b":",
    b"id: 7\n",
    b"retry: 10\n",
    b"data: [DONE]\n\n",
    b"[DONE]",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b",",
    b"null",
    b"true",
    b"1e999",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"0.5",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xC3",
    b"\xE2\x82",
    b"\xF0\x9F\x98",
    b"\x00",
    b"\xC0\x80",
    b"\xED\xA0\x80",
    b"\"type\":\"error\"",
    b"\"error\":{\"message\":\"x\"}",
    b"\"index\":",
];

#[derive(Debug, Clone)]
enum ByteMutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        token: usize,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
        to: usize,
    },
    /// A range of another fixture (usually of another wire) spliced in.
    Splice {
        at: usize,
        fixture: usize,
        from: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let at = any::<usize>();
    prop_oneof![
        2 => (at, 0u8..8).prop_map(|(at, bit)| ByteMutation::Flip { at, bit }),
        1 => (at, any::<u8>()).prop_map(|(at, byte)| ByteMutation::Set { at, byte }),
        4 => (at, 0..TOKENS.len()).prop_map(|(at, token)| ByteMutation::Insert { at, token }),
        2 => (at, 1usize..64).prop_map(|(at, len)| ByteMutation::Delete { at, len }),
        1 => (at, 1usize..400, any::<usize>())
            .prop_map(|(at, len, to)| ByteMutation::Duplicate { at, len, to }),
        2 => (at, any::<usize>(), any::<usize>(), 1usize..600)
            .prop_map(|(at, fixture, from, len)| ByteMutation::Splice { at, fixture, from, len }),
        1 => at.prop_map(|at| ByteMutation::Truncate { at }),
    ]
}

fn apply_byte_mutation(body: &mut Vec<u8>, mutation: &ByteMutation) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    match *mutation {
        ByteMutation::Flip { at, bit } => {
            if !body.is_empty() {
                let i = pos(at, body.len());
                body[i] ^= 1 << bit;
            }
        }
        ByteMutation::Set { at, byte } => {
            if !body.is_empty() {
                let i = pos(at, body.len());
                body[i] = byte;
            }
        }
        ByteMutation::Insert { at, token } => {
            let i = pos(at, body.len() + 1);
            body.splice(i..i, TOKENS[token].iter().copied());
        }
        ByteMutation::Delete { at, len } => {
            if !body.is_empty() {
                let i = pos(at, body.len());
                let end = (i + len).min(body.len());
                body.drain(i..end);
            }
        }
        ByteMutation::Duplicate { at, len, to } => {
            if !body.is_empty() {
                let i = pos(at, body.len());
                let end = (i + len).min(body.len());
                let piece = body[i..end].to_vec();
                let to = pos(to, body.len() + 1);
                body.splice(to..to, piece);
            }
        }
        ByteMutation::Splice {
            at,
            fixture,
            from,
            len,
        } => {
            let donor = &fixtures()[fixture % fixtures().len()].body;
            if !donor.is_empty() {
                let start = pos(from, donor.len());
                let end = (start + len).min(donor.len());
                let i = pos(at, body.len() + 1);
                body.splice(i..i, donor[start..end].iter().copied());
            }
        }
        ByteMutation::Truncate { at } => {
            let i = pos(at, body.len() + 1);
            body.truncate(i);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LineEnds {
    Keep,
    Crlf,
    Lf,
    Cr,
}

fn rewrite_line_ends(body: &[u8], ends: LineEnds) -> Vec<u8> {
    let lf: Vec<u8> = {
        // Normalise to LF first.
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'\r' {
                out.push(b'\n');
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            } else {
                out.push(body[i]);
            }
            i += 1;
        }
        out
    };
    match ends {
        LineEnds::Keep => body.to_vec(),
        LineEnds::Lf => lf,
        LineEnds::Crlf => lf
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect(),
        LineEnds::Cr => lf
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect(),
    }
}

fn line_ends() -> impl Strategy<Value = LineEnds> {
    prop_oneof![
        6 => Just(LineEnds::Keep),
        1 => Just(LineEnds::Crlf),
        1 => Just(LineEnds::Lf),
        1 => Just(LineEnds::Cr),
    ]
}

// ---------------------------------------------------------------------------------------------
// Byte-level properties.
// ---------------------------------------------------------------------------------------------

/// Prefixes of every recording, fed to its own wire and (some) to every other wire: a cut
/// stream must end in an error or a complete response, never a panic. Short recordings are
/// cut at every byte boundary; long ones at evenly spread cuts plus cuts next to line
/// breaks, so that each recording costs about `CONCLAVE_FUZZ_CASES / 1500 × 4 MB` of
/// parsing (with `CONCLAVE_FUZZ_CASES=20000`, every recording up to ~10 KB is cut at every
/// byte boundary).
#[test]
fn every_truncation_of_every_recording() {
    let started = Instant::now();
    let before = inputs();
    let byte_budget = 4 * 1024 * 1024 * (cases(1500) as usize) / 1500;
    for fixture in fixtures() {
        let body = &fixture.body;
        let max_cuts = (2 * byte_budget / body.len().max(1)).max(64);
        let mut cuts: Vec<usize> = if body.len() < max_cuts {
            (0..=body.len()).collect()
        } else {
            let step = (2 * body.len() / max_cuts).max(1);
            let mut cuts: Vec<usize> = (0..=body.len()).step_by(step).collect();
            let breaks: Vec<usize> = body
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i)
                .collect();
            let every = (breaks.len() / (max_cuts / 6).max(1)).max(1);
            for i in breaks.into_iter().step_by(every) {
                cuts.extend([i.saturating_sub(1), i, i + 1, i + 2]);
            }
            cuts.push(body.len());
            cuts.retain(|c| *c <= body.len());
            cuts
        };
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            let prefix = &body[..cut];
            let _guard = TARGET.watchdog_arm(
                "every_truncation_of_every_recording",
                Arc::new(format!("{} cut at {cut}", fixture.name)),
            );
            let own = run_stream(fixture.wire, prefix, &Delivery::whole())
                .unwrap_or_else(|e| panic!("{} cut at {cut}: {e}", fixture.name));
            assert!(
                !own.items.is_empty() || cut == 0,
                "{} cut at {cut}: the stream ended with no item at all",
                fixture.name
            );
            // Other wires' parsers get the same bytes at some cuts.
            if cut % 61 == 0 {
                for wire in WIRES.into_iter().filter(|w| *w != fixture.wire) {
                    run_stream(wire, prefix, &Delivery::whole()).unwrap_or_else(|e| {
                        panic!("{} as {wire:?} cut at {cut}: {e}", fixture.name)
                    });
                }
            }
        }
    }
    eprintln!(
        "fuzz_streams::every_truncation_of_every_recording: {} inputs run, {:.2?}",
        inputs() - before,
        started.elapsed()
    );
}

/// A byte order mark before a recording changes nothing (the SSE rules drop one leading
/// BOM), however the reads split it; a second BOM is not dropped but must not panic either.
#[test]
fn byte_order_marks() {
    let _guard = TARGET.watchdog_arm("byte_order_marks", Arc::new("BOM + fixtures"));
    let bom = "\u{feff}".as_bytes();
    for fixture in fixtures() {
        let plain = run_stream(fixture.wire, &fixture.body, &Delivery::whole()).unwrap();
        let with_bom = [bom, &fixture.body].concat();
        for size in [1, 2, 3, 5, 4096] {
            let got = run_stream(fixture.wire, &with_bom, &reads_of(size)).unwrap();
            assert_eq!(
                got, plain,
                "{} with a BOM in {size}-byte reads",
                fixture.name
            );
        }
        let two = [bom, bom, &fixture.body].concat();
        run_stream(fixture.wire, &two, &reads_of(2)).unwrap();
        run_stream(fixture.wire, bom, &reads_of(1)).unwrap();
    }
}

/// Recordings mutated at the byte level, line ends rewritten, delivered in random reads:
/// every check holds, and the result is the same as when the whole body arrives at once.
#[test]
fn mutated_recordings_in_random_reads() {
    let n = fixtures().len();
    TARGET.fuzz(
        "mutated_recordings_in_random_reads",
        1500,
        (
            0..n,
            proptest::sample::select(WIRES.to_vec()),
            proptest::bool::weighted(0.7),
            proptest::collection::vec(byte_mutation(), 0..6),
            line_ends(),
            delivery(),
        ),
        |(index, other_wire, own_wire, mutations, ends, delivery)| {
            let fixture = &fixtures()[index];
            let wire = if own_wire { fixture.wire } else { other_wire };
            let mut body = rewrite_line_ends(&fixture.body, ends);
            for m in &mutations {
                apply_byte_mutation(&mut body, m);
            }
            let whole = run_stream(wire, &body, &Delivery::whole())?;
            if delivery.break_after.is_none() {
                let split = run_stream(wire, &body, &delivery)?;
                prop_assert_eq!(split, whole, "the result depends on the network reads");
            } else {
                run_stream(wire, &body, &delivery)?;
            }
            Ok(())
        },
    );
}

/// Unstructured SSE-ish bytes: random tokens, JSON fragments and raw bytes.
#[test]
fn sse_garbage() {
    let piece = prop_oneof![
        4 => (0..TOKENS.len()).prop_map(|i| TOKENS[i].to_vec()),
        2 => "[ -~]{0,12}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
        1 => (0..1usize << 16).prop_map(|i| {
            let events = all_events();
            let e = &events[i % events.len()];
            format!("event: {}\ndata: {}\n\n", e.event, e.data).into_bytes()
        }),
    ];
    TARGET.fuzz(
        "sse_garbage",
        2500,
        (
            proptest::sample::select(WIRES.to_vec()),
            proptest::collection::vec(piece, 0..40),
            delivery(),
        ),
        |(wire, pieces, delivery)| {
            let body = pieces.concat();
            let whole = run_stream(wire, &body, &Delivery::whole())?;
            if delivery.break_after.is_none() {
                let split = run_stream(wire, &body, &delivery)?;
                prop_assert_eq!(split, whole, "the result depends on the network reads");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Event-level properties: splicing and JSON mutation.
// ---------------------------------------------------------------------------------------------

/// Event and block types of all four wires.
const TYPES: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "text",
    "text_delta",
    "thinking",
    "thinking_delta",
    "signature_delta",
    "input_json_delta",
    "tool_use",
    "server_tool_use",
    "redacted_thinking",
    "web_search_tool_result",
    "response.created",
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "function_call",
    "message",
    "reasoning",
    "web_search_call",
    "",
];

/// Keys the parsers read.
const KEYS: &[&str] = &[
    "type",
    "index",
    "output_index",
    "item_id",
    "id",
    "call_id",
    "name",
    "arguments",
    "delta",
    "text",
    "choices",
    "finish_reason",
    "tool_calls",
    "function",
    "content",
    "usage",
    "error",
    "candidates",
    "parts",
    "functionCall",
    "args",
    "thought",
    "thoughtSignature",
    "finishReason",
    "usageMetadata",
    "promptFeedback",
    "blockReason",
    "response",
    "item",
    "partial_json",
    "stop_reason",
    "content_block",
    "message",
    "input",
    "signature",
    "data",
    "reasoning_content",
    "reasoning",
    "refusal",
    "x_groq",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "status",
    "incomplete_details",
    "output",
    "summary",
    "code",
    "promptTokenCount",
    "candidatesTokenCount",
];

/// Values that stress a parser: extreme numbers, wrong types, deep nesting, long strings.
fn json_atom() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!("")),
        Just(json!("x")),
        Just(json!("[DONE]")),
        Just(json!({})),
        Just(json!([])),
        Just(json!([1, "a", null])),
        proptest::sample::select(TYPES).prop_map(|t| json!({"type": t})),
        proptest::sample::select(TYPES).prop_map(|t| json!(t)),
        (1usize..100_000).prop_map(|n| json!("w".repeat(n))),
        (1usize..120).prop_map(|depth| {
            let mut v = json!(1);
            for _ in 0..depth {
                v = json!([v]);
            }
            v
        }),
        "\\PC{0,12}".prop_map(Value::String),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum JsonMutation {
    Replace {
        node: usize,
        with: Value,
    },
    Remove {
        node: usize,
    },
    Rename {
        node: usize,
        to: &'static str,
    },
    SetType {
        node: usize,
        to: &'static str,
    },
    Insert {
        node: usize,
        key: &'static str,
        value: Value,
    },
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    let node = any::<usize>();
    prop_oneof![
        4 => (node, json_atom()).prop_map(|(node, with)| JsonMutation::Replace { node, with }),
        2 => node.prop_map(|node| JsonMutation::Remove { node }),
        1 => (node, proptest::sample::select(KEYS)).prop_map(|(node, to)| JsonMutation::Rename { node, to }),
        2 => (node, proptest::sample::select(TYPES)).prop_map(|(node, to)| JsonMutation::SetType { node, to }),
        2 => (node, proptest::sample::select(KEYS), json_atom())
            .prop_map(|(node, key, value)| JsonMutation::Insert { node, key, value }),
    ]
}

/// Counts the nodes of `value` (pre-order).
fn node_count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(node_count).sum(),
        Value::Object(map) => map.values().map(node_count).sum(),
        _ => 0,
    }
}

/// Calls `f` on the `n`-th node (pre-order) together with its parent container, if any.
fn with_node(value: &mut Value, n: usize, f: &mut dyn FnMut(&mut Value)) -> Option<usize> {
    if n == 0 {
        f(value);
        return None;
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => return Some(n),
    };
    for child in children {
        match with_node(child, n, f) {
            None => return None,
            Some(rest) => n = rest,
        }
    }
    Some(n)
}

fn apply_json_mutation(value: &mut Value, mutation: &JsonMutation) {
    let count = node_count(value);
    match mutation {
        JsonMutation::Replace { node, with } => {
            // Never the root (that would only test "not an object").
            let n = 1 + node % count.max(1);
            if n < count {
                with_node(value, n, &mut |v| *v = with.clone());
            }
        }
        JsonMutation::Remove { node } => {
            with_node(value, node % count, &mut |v| match v {
                Value::Object(map) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(node % map.len())
                        .cloned()
                        .unwrap_or_default();
                    map.remove(&key);
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = node % items.len();
                    items.remove(i);
                }
                _ => {}
            });
        }
        JsonMutation::Rename { node, to } => {
            with_node(value, node % count, &mut |v| {
                if let Value::Object(map) = v
                    && !map.is_empty()
                {
                    let key = map
                        .keys()
                        .nth(node % map.len())
                        .cloned()
                        .unwrap_or_default();
                    if let Some(moved) = map.remove(&key) {
                        map.insert((*to).to_owned(), moved);
                    }
                }
            });
        }
        JsonMutation::SetType { node, to } => {
            with_node(value, node % count, &mut |v| {
                if let Value::Object(map) = v {
                    map.insert("type".into(), json!(to));
                }
            });
        }
        JsonMutation::Insert {
            node,
            key,
            value: new,
        } => {
            with_node(value, node % count, &mut |v| {
                if let Value::Object(map) = v {
                    map.insert((*key).to_owned(), new.clone());
                }
            });
        }
    }
}

/// One event of a spliced stream.
#[derive(Debug, Clone)]
struct EventPick {
    /// Which recorded event (of any wire).
    source: usize,
    /// Another event name, sometimes.
    rename: Option<&'static str>,
    mutations: Vec<JsonMutation>,
}

fn event_pick() -> impl Strategy<Value = EventPick> {
    (
        any::<usize>(),
        proptest::option::weighted(0.1, proptest::sample::select(TYPES)),
        prop_oneof![
            3 => Just(Vec::new()),
            2 => proptest::collection::vec(json_mutation(), 1..4),
        ],
    )
        .prop_map(|(source, rename, mutations)| EventPick {
            source,
            rename,
            mutations,
        })
}

fn build_event(pick: &EventPick) -> SseEvent {
    let events = all_events();
    mutate_event(&events[pick.source % events.len()], pick)
}

/// `event` renamed and its JSON mutated as `pick` says.
fn mutate_event(event: &SseEvent, pick: &EventPick) -> SseEvent {
    let mut event = event.clone();
    if let Some(name) = pick.rename {
        event.event = if name.is_empty() {
            "message".into()
        } else {
            name.into()
        };
    }
    if !pick.mutations.is_empty()
        && let Ok(mut value) = serde_json::from_str::<Value>(&event.data)
    {
        for m in &pick.mutations {
            apply_json_mutation(&mut value, m);
        }
        event.data = value.to_string();
    }
    event
}

/// Streams spliced from the events of all four wires (mostly of the parser's own wire, in
/// order, with some events mutated), fed to the pure parsers.
#[test]
fn spliced_and_mutated_events() {
    let n = fixtures().len();
    TARGET.fuzz(
        "spliced_and_mutated_events",
        1200,
        (
            0..n,
            proptest::sample::select(WIRES.to_vec()),
            proptest::bool::weighted(0.75),
            proptest::collection::vec((proptest::bool::weighted(0.7), event_pick()), 0..40),
        ),
        |(index, other_wire, own_wire, picks)| {
            let fixture = &fixtures()[index];
            let wire = if own_wire { fixture.wire } else { other_wire };
            // Start from the recording's own events and mutate or replace some.
            let mut events: Vec<SseEvent> = fixture.events.clone();
            for (i, (in_place, pick)) in picks.iter().enumerate() {
                let event = build_event(pick);
                if *in_place && !events.is_empty() {
                    let at = (pick.source / 7 + i) % events.len();
                    if pick.mutations.is_empty() && pick.rename.is_none() {
                        // Another wire's (or this wire's) event spliced in.
                        events.insert(at, event);
                    } else {
                        // The event at that position, mutated.
                        events[at] = mutate_event(&events[at], pick);
                    }
                } else {
                    events.push(event);
                }
            }
            run_events(wire, &events)?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile shapes: huge fields, many events, long lines in small reads.
// ---------------------------------------------------------------------------------------------

fn sse_body(events: &[(&str, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, data) in events {
        if !name.is_empty() {
            body.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        body.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    }
    body
}

/// Runs one hostile body with the usual checks. How long it took is printed, never asserted
/// (a loaded machine must not fail a test): what matters is that nothing is quadratic, which
/// on these multi-megabyte bodies takes minutes to hours and trips the hang watchdog
/// (`CONCLAVE_FUZZ_HANG_SECS`). The speed itself is the benches' business.
fn hostile(name: &str, wire: Wire, body: &[u8], delivery: &Delivery) {
    let _guard = TARGET.watchdog_arm(name, Arc::new(format!("{name}: {} bytes", body.len())));
    let started = Instant::now();
    run_stream(wire, body, delivery).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "fuzz_streams::hostile {name}: {} bytes as {wire:?} in {:.2?}",
        body.len(),
        started.elapsed()
    );
}

fn reads_of(size: usize) -> Delivery {
    Delivery {
        chunk_sizes: vec![size],
        pending_pattern: Vec::new(),
        break_after: None,
    }
}

#[test]
fn hostile_framing() {
    let mib = 1024 * 1024;
    // Blank lines only, in one read.
    hostile(
        "blank_lines_in_one_read",
        Wire::Chat,
        &vec![b'\n'; mib],
        &Delivery::whole(),
    );
    // Many tiny events in one read.
    hostile(
        "tiny_events_in_one_read",
        Wire::Chat,
        &b": p\n\n".repeat(mib / 5),
        &Delivery::whole(),
    );
    // One long data line arriving in small reads (a huge `response.completed`).
    let mut long = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'a', 8 * mib));
    long.extend_from_slice(b"\"}]}]}}\n\n");
    hostile(
        "long_line_in_4k_reads",
        Wire::Responses,
        &long,
        &reads_of(4096),
    );
    // A line that never ends.
    hostile(
        "endless_line_in_4k_reads",
        Wire::Chat,
        &[b"data: ".as_slice(), &vec![b'x'; 8 * mib]].concat(),
        &reads_of(4096),
    );
    // An invalid UTF-8 byte early, then a long valid body in small reads.
    let mut invalid = b"data: {\"choices\":[]}\n\ndata: \xFF".to_vec();
    invalid.extend(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n".repeat(mib / 40));
    hostile(
        "invalid_utf8_then_long_body",
        Wire::Chat,
        &invalid,
        &reads_of(1024),
    );
}

/// Shapes whose bookkeeping could go quadratic: tool-call indices in descending order (Chat),
/// and many output items with every later event naming the first one (Responses).
#[test]
fn hostile_structure() {
    // Enough calls that shifting a sorted vector on every insert would take minutes.
    let mut chat = Vec::new();
    for index in (0..150_000).rev() {
        chat.extend_from_slice(
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":{index},\"id\":\"c{index}\",\"function\":{{\"name\":\"f\",\"arguments\":\"\"}}}}]}}}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    chat.extend_from_slice(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n");
    hostile(
        "chat_descending_tool_call_indices",
        Wire::Chat,
        &chat,
        &Delivery::whole(),
    );

    let n = 40_000;
    let mut responses = Vec::new();
    let mut event = |kind: &str, data: Value| {
        responses.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    };
    for k in 0..n {
        event(
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": k,
                   "item": {"type": "function_call", "id": format!("fc_{k}"), "call_id": format!("call_{k}"), "name": "f", "arguments": ""}}),
        );
    }
    for _ in 0..n {
        event(
            "response.function_call_arguments.delta",
            json!({"type": "response.function_call_arguments.delta", "item_id": "fc_0", "output_index": 0, "delta": "x"}),
        );
    }
    let output: Vec<Value> = (0..n)
        .map(|k| json!({"type": "function_call", "id": format!("fc_{k}"), "call_id": format!("call_{k}"), "name": "f", "arguments": "{}"}))
        .collect();
    event(
        "response.completed",
        json!({"type": "response.completed", "response": {"output": output}}),
    );
    hostile(
        "responses_many_items_events_on_the_first",
        Wire::Responses,
        &responses,
        &Delivery::whole(),
    );
}

/// The SSE layer's bounds: a line or an event over `MAX_EVENT_BYTES` ends the stream with an
/// error instead of being buffered; an event under it still parses.
#[test]
fn sse_size_limits() {
    let _guard = TARGET.watchdog_arm("sse_size_limits", Arc::new("16 MiB lines and events"));
    let max = sse::MAX_EVENT_BYTES;
    let mut long_line = b"data: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'x', max));
    long_line.extend_from_slice(b"\n\n");
    let out = run_stream(Wire::Chat, &long_line, &reads_of(64 * 1024)).unwrap();
    assert!(
        matches!(out.items.last(), Some(Err(e)) if e.contains("longer than")),
        "{:?}",
        out.items.last()
    );
    let piece = format!("data: {}\n", "y".repeat(1 << 20));
    let long_event = format!("{}\n", piece.repeat(max / (1 << 20) + 1)).into_bytes();
    let out = run_stream(Wire::Chat, &long_event, &Delivery::whole()).unwrap();
    assert!(
        matches!(out.items.last(), Some(Err(e)) if e.contains("more than")),
        "{:?}",
        out.items.last()
    );
    let text = "z".repeat(max - 1024);
    let body = sse_body(&[
        (
            "",
            json!({"choices":[{"index":0,"delta":{"content": text}}]}).to_string(),
        ),
        (
            "",
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}).to_string(),
        ),
        ("", "[DONE]".into()),
    ]);
    let out = run_stream(Wire::Chat, &body, &reads_of(16 * 1024)).unwrap();
    assert!(
        out.items.iter().all(Result::is_ok),
        "an event under the limit failed: {:?}",
        out.items.last()
    );
}

#[test]
fn hostile_payloads() {
    let mib = 1024 * 1024;
    let big = "b".repeat(4 * mib);
    // Huge text and arguments in single events.
    hostile(
        "huge_chat_delta",
        Wire::Chat,
        &sse_body(&[
            ("", json!({"choices":[{"index":0,"delta":{"content": big, "tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments": big}}]}}]}).to_string()),
            ("", json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}).to_string()),
            ("", "[DONE]".into()),
        ]),
        &Delivery::whole(),
    );
    // Many tool calls, in descending index order (each one inserted at the front).
    let calls: Vec<(&str, String)> = (0..20_000u32)
        .rev()
        .map(|i| ("", json!({"choices":[{"delta":{"tool_calls":[{"index": i * 1000, "function":{"arguments":"{}"}}]}}]}).to_string()))
        .collect();
    hostile(
        "many_chat_tool_indices",
        Wire::Chat,
        &sse_body(&calls),
        &Delivery::whole(),
    );
    // Many Responses output items, each delta looking its item up by id.
    let mut items: Vec<(&str, String)> = Vec::new();
    for i in 0..10_000u32 {
        items.push(("response.output_item.added", json!({"type":"response.output_item.added","output_index": i,"item":{"type":"function_call","id": format!("fc{i}"),"call_id": format!("c{i}"),"name":"f","arguments":""}}).to_string()));
    }
    for i in 0..10_000u32 {
        items.push(("response.function_call_arguments.delta", json!({"type":"response.function_call_arguments.delta","item_id": format!("fc{i}"),"delta":"{}"}).to_string()));
    }
    hostile(
        "many_responses_items",
        Wire::Responses,
        &sse_body(&items),
        &Delivery::whole(),
    );
    // Many Anthropic blocks left open.
    let blocks: Vec<(&str, String)> = (0..30_000u32)
        .map(|i| ("content_block_start", json!({"type":"content_block_start","index": i,"content_block":{"type":"tool_use","id": format!("t{i}"),"name":"f","input":{}}}).to_string()))
        .chain(std::iter::once(("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"max_tokens"}}).to_string())))
        .collect();
    hostile(
        "many_open_anthropic_blocks",
        Wire::Anthropic,
        &sse_body(&blocks),
        &Delivery::whole(),
    );
    // Many Gemini function calls with deep arguments.
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!({"a": [deep]});
    }
    let parts: Vec<Value> = (0..2_000)
        .map(|_| json!({"functionCall": {"name": "f", "args": deep}}))
        .collect();
    hostile(
        "many_gemini_calls",
        Wire::Gemini,
        &sse_body(&[(
            "",
            json!({"candidates":[{"content":{"parts": parts},"finishReason":"STOP"}]}).to_string(),
        )]),
        &Delivery::whole(),
    );
    // Extreme usage numbers on every wire.
    let max = u64::MAX;
    for (wire, data) in [
        (
            Wire::Chat,
            json!({"choices":[],"usage":{"prompt_tokens": max,"completion_tokens": max}}),
        ),
        (
            Wire::Gemini,
            json!({"usageMetadata":{"promptTokenCount": max,"candidatesTokenCount": max}}),
        ),
        (
            Wire::Anthropic,
            json!({"type":"message_delta","usage":{"input_tokens": max,"output_tokens": max}}),
        ),
        (
            Wire::Responses,
            json!({"type":"response.completed","response":{"status":"completed","usage":{"input_tokens": max,"output_tokens": max}}}),
        ),
    ] {
        let name = data["type"].as_str().unwrap_or("message").to_owned();
        hostile(
            "extreme_usage",
            wire,
            &sse_body(&[(name.as_str(), data.to_string())]),
            &Delivery::whole(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real HTTP path: status, content type and body checks before any parsing.
// ---------------------------------------------------------------------------------------------

/// A backend of `wire` for a local server.
fn backend_for(wire: Wire, base_url: &str) -> Backend {
    let mut spec = common::spec(base_url, "fuzz", Some("FUZZ_API_KEY"));
    (spec.wire, spec.model) = match wire {
        Wire::Chat => (WireFormat::OpenAiChat, "gpt-4o-mini".to_owned()),
        Wire::Responses => (WireFormat::OpenAiResponses, "gpt-4o-mini".to_owned()),
        Wire::Anthropic => (WireFormat::Anthropic, "claude-sonnet-4-5".to_owned()),
        Wire::Gemini => (WireFormat::Gemini, "gemini-2.5-flash".to_owned()),
    };
    Backend::new(&spec, common::client(), &|_| Some("fuzz-key".to_owned())).expect("backend")
}

/// What the scripted server answers.
#[derive(Debug, Clone)]
struct Answer {
    wire: Wire,
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    piece_size: Option<usize>,
    break_after_body: bool,
    retry_after: Option<String>,
}

fn answer() -> impl Strategy<Value = Answer> {
    let n = fixtures().len();
    (
        proptest::sample::select(WIRES.to_vec()),
        prop_oneof![
            6 => Just(200u16),
            1 => proptest::sample::select(vec![201u16, 204, 400, 401, 403, 404, 408, 409, 429, 500, 503, 529]),
        ],
        proptest::sample::select(vec![
            "text/event-stream", "text/event-stream", "text/event-stream; charset=utf-8",
            "application/json", " application/json; charset=utf-8", "text/plain", "",
        ]),
        prop_oneof![
            4 => (0..n, proptest::collection::vec(byte_mutation(), 0..3)).prop_map(|(i, m)| {
                let mut body = fixtures()[i].body.clone();
                for m in &m {
                    apply_byte_mutation(&mut body, m);
                }
                body
            }),
            1 => Just(br#"{"error":{"message":"m","type":"t","code":7}}"#.to_vec()),
            1 => Just(br#"{"error":null}"#.to_vec()),
            1 => (1usize..50_000).prop_map(|k| "\u{e9}".repeat(k).into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
        ],
        proptest::option::weighted(0.5, 1usize..700),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(
            0.2,
            proptest::sample::select(vec!["1", "0.5", "-3", "nan", "99999999999", "Wed, 21 Oct 2015 07:28:00 GMT"])
                .prop_map(str::to_owned),
        ),
    )
        .prop_map(
            |(wire, status, content_type, body, piece_size, break_after_body, retry_after)| Answer {
                wire,
                status,
                content_type,
                body,
                piece_size,
                break_after_body,
                retry_after,
            },
        )
}

/// One call over real HTTP to a scripted server: the outcome must be an `Err` from
/// `Backend::stream` with a bounded body for a non-success status, and for a 200 event
/// stream exactly what the in-memory path gives for the same bytes.
#[test]
fn http_answers() {
    TARGET.fuzz("http_answers", 150, answer(), |answer| {
        count_input();
        // A fresh runtime per case: dropping it stops the scripted server and its socket.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(async {
            let mut script =
                common::Scripted::new(answer.status, answer.content_type, answer.body.clone());
            script.piece_size = answer.piece_size;
            script.break_after_body = answer.break_after_body;
            if let Some(value) = &answer.retry_after {
                script = script.header("retry-after", value);
            }
            let server = common::FakeServer::start(script).await;
            let backend = backend_for(answer.wire, &server.base_url);
            tokio::time::timeout(Duration::from_secs(20), async {
                match backend.stream(&common::hello()).await {
                    Err(error) => Err(error),
                    Ok(stream) => Ok(stream.collect::<Vec<Item>>().await),
                }
            })
            .await
        });
        let result = result.map_err(|_| TestCaseError::fail("the call did not end within 20 s"))?;
        let success = (200..300).contains(&answer.status);
        match result {
            Err(error) => {
                prop_assert!(!error.to_string().is_empty());
                if let ProviderError::Http { body, status, .. } = &error {
                    prop_assert_eq!(*status, answer.status);
                    prop_assert!(body.len() <= MAX_ERROR_BODY_BYTES + "…".len());
                    let policy = RetryPolicy { max_retries: 5 };
                    if let Some(wait) = policy.delay_with_jitter(0, &error, 0.3) {
                        prop_assert!(wait <= Duration::from_secs(60), "waits {:?}", wait);
                    }
                } else {
                    prop_assert!(success, "status {} gave {error:?}", answer.status);
                }
            }
            Ok(items) => {
                prop_assert!(success, "status {} gave a stream", answer.status);
                prop_assert!(
                    !answer
                        .content_type
                        .trim_start()
                        .starts_with("application/json"),
                    "a JSON body was parsed as a stream"
                );
                check_items(&items, answer.body.len() + 256)?;
                // (A 204 has no body in HTTP: the client never sees the scripted bytes.)
                if !answer.break_after_body && answer.status != 204 {
                    // Same bytes in memory: same chunks, same kind of ending.
                    let input =
                        futures::stream::iter(vec![Ok::<_, std::io::Error>(answer.body.clone())]);
                    let local: Vec<Item> = RUNTIME.with(|rt| {
                        rt.block_on(
                            answer
                                .wire
                                .stream(sse::events(input, "fuzz", "x"))
                                .collect(),
                        )
                    });
                    let chunks = |items: &[Item]| -> Vec<StreamChunk> {
                        items
                            .iter()
                            .filter_map(|i| i.as_ref().ok().cloned())
                            .collect()
                    };
                    let ending = |items: &[Item]| {
                        items
                            .last()
                            .and_then(|i| i.as_ref().err())
                            .map(std::mem::discriminant)
                    };
                    prop_assert_eq!(chunks(&items), chunks(&local));
                    prop_assert_eq!(ending(&items), ending(&local));
                }
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP errors and the retry policy.
// ---------------------------------------------------------------------------------------------

#[test]
fn http_errors_and_retry_hints() {
    let header_value = prop_oneof![
        proptest::sample::select(vec![
            "0",
            "1",
            "1.5",
            "-1",
            "NaN",
            "inf",
            "-inf",
            "1e309",
            "18446744073709551616",
            "99999999999999999999",
            "0.0000001",
            "  30 ",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "true",
            "false",
            "TRUE",
            "",
            "garbage",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,30}",
    ];
    let body = prop_oneof![
        Just(String::new()),
        Just(r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#.to_owned()),
        Just(r#"{"error":"plain"}"#.to_owned()),
        Just(r#"{"error":null,"message":5}"#.to_owned()),
        "\\PC{0,64}",
        (1usize..20_000).prop_map(|n| "é".repeat(n)),
    ];
    TARGET.fuzz(
        "http_errors_and_retry_hints",
        1500,
        (
            prop_oneof![
                Just(200u16),
                Just(408),
                Just(429),
                Just(500),
                Just(529),
                100u16..1000
            ],
            proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "retry-after",
                        "retry-after-ms",
                        "x-should-retry",
                        "content-type",
                    ]),
                    header_value,
                ),
                0..4,
            ),
            body,
            proptest::collection::vec(any::<u8>(), 0..16),
            any::<u32>(),
            any::<f64>(),
        ),
        |(status, headers, body, raw_tail, attempt, jitter)| {
            count_input();
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in &headers {
                if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
                    map.append(*name, value);
                }
            }
            let mut bytes = body.into_bytes();
            bytes.extend_from_slice(&raw_tail);
            let error = ProviderError::from_http("fuzz", status, &map, &bytes);
            prop_assert!(!error.to_string().is_empty());
            let _ = error.http_status();
            let _ = is_retryable(&error);
            let policy = RetryPolicy {
                max_retries: u32::MAX,
            };
            if let Some(delay) = policy.delay_with_jitter(attempt, &error, jitter) {
                prop_assert!(delay <= Duration::from_secs(60), "delay {:?}", delay);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Claude Code stream-json.
// ---------------------------------------------------------------------------------------------

fn claude_request(tools: bool) -> ChatRequest {
    let tool = |name: &str| ToolSpec {
        name: name.into(),
        description: String::new(),
        parameters: json!({"type": "object"}),
    };
    ChatRequest {
        messages: vec![ChatMessage::system("s"), ChatMessage::user("q")],
        tools: if tools {
            vec![tool("vote"), tool("new_answer")]
        } else {
            Vec::new()
        },
        tool_choice: if tools {
            ToolChoice::Required
        } else {
            ToolChoice::None
        },
    }
}

fn claude_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(
            "```json\n{\"tool\": \"vote\", \"arguments\": {\"agent_id\": \"agent1.1\"}}\n```"
                .to_owned()
        ),
        Just("[{\"name\": \"new_answer\", \"args\": \"{\\\"content\\\": \\\"x\\\"}\"}]".to_owned()),
        Just("```\n```\n```".to_owned()),
        Just("```json\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n```".to_owned()),
        "\\PC{0,30}",
        (1usize..2000).prop_map(|n| "```\n{}\n".repeat(n)),
    ]
    .boxed()
}

/// One stream-json line of the Claude Code CLI.
fn claude_line() -> BoxedStrategy<Value> {
    let num = prop_oneof![
        4 => (0u64..1000).prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(u64::MAX / 2 + 1)),
        1 => Just(json!(-1)),
        1 => Just(json!("12")),
    ];
    let usage = (num.clone(), num.clone(), num.clone(), num).prop_map(|(a, b, c, d)| {
        json!({"input_tokens": a, "cache_creation_input_tokens": b,
               "cache_read_input_tokens": c, "output_tokens": d})
    });
    let block = prop_oneof![
        claude_text().prop_map(|t| json!({"type": "text", "text": t})),
        "\\PC{0,12}".prop_map(|t| json!({"type": "thinking", "thinking": t})),
        ("[a-z0-9]{0,4}", "[A-Za-z]{0,6}", json_atom()).prop_map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input})
        ),
        json_atom(),
    ];
    let blocks = proptest::collection::vec(block, 0..4);
    prop_oneof![
        1 => Just(json!({"type": "system", "subtype": "init", "model": "m", "session_id": "s"})),
        2 => "[a-z0-9]{0,3}".prop_map(|id| json!({"type": "stream_event",
            "event": {"type": "message_start", "message": {"id": id}}})),
        3 => (prop_oneof![Just("text_delta"), Just("thinking_delta"), Just("x")], "\\PC{0,10}")
            .prop_map(|(kind, text)| json!({"type": "stream_event", "event": {
                "type": "content_block_delta",
                "delta": {"type": kind, "text": text, "thinking": text}}})),
        3 => ("[a-z0-9]{0,3}", blocks.clone(), proptest::option::of("[a-z_]{0,10}"))
            .prop_map(|(id, content, stop)| json!({"type": "assistant",
                "message": {"id": id, "content": content, "stop_reason": stop}})),
        1 => ("[a-z0-9]{0,4}", json_atom()).prop_map(|(id, content)| json!({"type": "user",
            "message": {"content": [{"type": "tool_result", "tool_use_id": id, "content": content}]}})),
        2 => (
            prop_oneof![Just("success"), Just("error_max_turns"), Just("error_during_execution"), Just("")],
            proptest::option::of(any::<bool>()),
            proptest::option::of(claude_text()),
            proptest::option::of(usage),
            json_atom(),
        )
            .prop_map(|(subtype, is_error, result, usage, status)| json!({"type": "result",
                "subtype": subtype, "is_error": is_error, "result": result, "usage": usage,
                "errors": ["e1", 2], "api_error_status": status})),
        1 => json_atom().prop_map(|parent| json!({"type": "assistant",
            "parent_tool_use_id": parent, "message": {"content": []}})),
        1 => json_atom(),
    ]
    .boxed()
}

#[test]
fn claude_code_lines() {
    let raw_line = prop_oneof![
        6 => claude_line().prop_map(|v| v.to_string()),
        1 => "[ -~]{0,20}",
        1 => "\\{[ -~]{0,20}",
        1 => Just(String::new()),
    ];
    TARGET.fuzz(
        "claude_code_lines",
        2000,
        (
            any::<bool>(),
            proptest::collection::vec(raw_line, 0..12),
            proptest::option::of(prop_oneof![Just(0i32), Just(1), any::<i32>()]),
            "\\PC{0,40}",
        ),
        |(tools, lines, code, stderr)| {
            count_input();
            let input_len: usize = lines.iter().map(|l| l.len() + 1).sum::<usize>() + stderr.len();
            let request = claude_request(tools);
            let (items, peak) = peak_growth(|| {
                let mut parser = ClaudeCodeParser::new(&request);
                let mut out = VecDeque::new();
                for line in &lines {
                    if parser.on_line(line, &mut out) == Flow::Done {
                        break;
                    }
                }
                parser.on_exit(code, &stderr, &mut out);
                Vec::from(out)
            });
            let bound = memory_bound(input_len);
            prop_assert!(peak <= bound, "heap grew by {peak} bytes (bound {bound})");
            check_items(&items, input_len + 256)?;
            Ok(())
        },
    );
}

#[test]
fn claude_code_tool_call_text() {
    let tools = claude_request(true).tools;
    TARGET.fuzz(
        "claude_code_tool_call_text",
        1500,
        proptest::collection::vec(
            prop_oneof![
                claude_text(),
                Just("```".to_owned()),
                Just("\n".to_owned()),
                json_atom().prop_map(|v| v.to_string()),
                json_atom().prop_map(|v| json!({"tool": "vote", "arguments": v}).to_string()),
            ],
            0..8,
        ),
        |pieces| {
            count_input();
            let text = pieces.concat();
            let calls = parse_tool_calls(&text, &tools);
            for (name, _) in &calls {
                prop_assert!(name == "vote" || name == "new_answer", "call of {}", name);
            }
            Ok(())
        },
    );
}
