//! Route lookup as the data path does it once per upgrade request, with 10, 100,000 and
//! 1,000,000 users loaded through `RouteTable::apply(RouteChange::Upsert(..))`.
//!
//! Two access patterns: `hot` looks up one path again and again (the table's pure compute
//! cost), `spread` cycles through 4096 paths drawn at random from all users (the cost when
//! the entries are not in cache, as with many users connecting). `route_key_and_lookup`
//! adds the request-target to route-key step of `http::route_key`. A worker's lookups go
//! through its `RouteView`, which shares the table's shards and probes them alike.
//!
//! `route_change`: what a change costs, with 1,000,000 users: the controller building a
//! one-user change (a copy of one shard), and a worker installing one slice of a
//! 46,000-user change (a 2 MiB POST): the longest its tunnels wait for a route change.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use mtt_mu_server::http;
use mtt_mu_server::routes::{Route, RouteChange, RouteTable, RouteUpdate};
use testkit::rng::Rng;

const USER_COUNTS: [usize; 3] = [10, 100_000, 1_000_000];
/// How many distinct paths the `spread` pattern cycles through.
const SPREAD: usize = 4096;

/// A path shaped like a panel's: a slash and 16 hex digits.
fn path(i: usize) -> String {
    format!("/{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn table_with(users: usize) -> RouteTable {
    let routes = (0..users)
        .map(|i| Route::new(&path(i), &format!("127.0.0.1:{}", 1024 + i % 60000)))
        .collect();
    let mut table = RouteTable::new();
    table.apply(&RouteChange::Upsert(routes));
    assert_eq!(table.len(), users);
    table
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for users in USER_COUNTS {
        let table = table_with(users);
        let hot = path(users / 2);
        group.bench_with_input(BenchmarkId::new("hot", users), &hot, |b, key| {
            b.iter(|| table.lookup(black_box(key.as_str())).is_some())
        });

        // Seeded, so every run looks up the same paths.
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        let keys: Vec<String> = (0..SPREAD)
            .map(|_| path(rng.below(users as u64) as usize))
            .collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("spread", users), &keys, |b, keys| {
            b.iter(|| {
                i = (i + 1) % SPREAD;
                assert!(table.lookup(black_box(keys[i].as_str())).is_some())
            })
        });

        let targets: Vec<String> = keys.iter().map(|k| format!("{k}?ed=2048")).collect();
        let mut i = 0;
        group.bench_with_input(
            BenchmarkId::new("route_key_and_lookup_spread", users),
            &targets,
            |b, targets| {
                b.iter(|| {
                    i = (i + 1) % SPREAD;
                    let key = http::route_key(black_box(&targets[i])).expect("valid target");
                    assert!(table.lookup(&key).is_some())
                })
            },
        );
    }
    group.finish();
}

fn change(c: &mut Criterion) {
    let users = 1_000_000;
    let mut group = c.benchmark_group("route_change");
    let mut table = table_with(users);
    let mut flip = 0usize;
    group.bench_function(BenchmarkId::new("apply_one_user", users), |b| {
        b.iter(|| {
            flip += 1;
            let route = Route::new(&path(flip % users), &format!("127.0.0.1:{}", flip % 2 + 1));
            table.apply(&RouteChange::Upsert(vec![route]))
        })
    });
    // One 2 MiB POST's worth: 46,000 users already there, with a new destination.
    let mut view = table.view();
    let batch: Vec<Route> = (0..46_000)
        .map(|i| Route::new(&path(i * 21), "127.0.0.1:7"))
        .collect();
    let slices: Vec<RouteUpdate> = table.apply(&RouteChange::Upsert(batch)).into_slices();
    let mut i = 0;
    group.bench_function(BenchmarkId::new("install_slice_of_46k", users), |b| {
        b.iter(|| {
            i = (i + 1) % slices.len();
            view.install(black_box(&slices[i]))
        })
    });
    println!(
        "a 46,000-user change on 1,000,000 users: {} slices",
        slices.len()
    );
    group.finish();
}

criterion_group!(benches, lookup, change);
criterion_main!(benches);
