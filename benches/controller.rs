//! The controller's cost for the largest command it accepts: a 2 MiB add (about 46,000
//! users), parsed and validated whole (`controller::parse_command`), and then applied to the
//! authoritative table of a controller with no workers (`Controller::handle_body`).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mtt_mu_server::controller::{self, Command, Controller, Options};

/// An add command as close to 2 MiB as whole entries allow, and its user count.
fn add_body(limit: usize) -> (Vec<u8>, usize) {
    let mut body = br#"{"opt":1,"args_bunch":["#.to_vec();
    let mut users = 0;
    loop {
        let entry = format!(
            r#"{}{{"path":"/{:016x}","dst":"127.0.0.1:{}"}}"#,
            if users == 0 { "" } else { "," },
            (users as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            1024 + users % 60000
        );
        if body.len() + entry.len() + 2 > limit {
            break;
        }
        body.extend_from_slice(entry.as_bytes());
        users += 1;
    }
    body.extend_from_slice(b"]}");
    (body, users)
}

fn parse(c: &mut Criterion) {
    let (body, users) = add_body(controller::MAX_BODY as usize);
    let mut group = c.benchmark_group("controller_add_2MiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(20);
    group.bench_function("parse_command", |b| {
        b.iter(|| match controller::parse_command(black_box(&body)) {
            Ok(Command::Add(list)) => assert_eq!(list.len(), users),
            other => panic!("not an add: {other:?}"),
        })
    });
    // Applying overwrites the same users each time after the first: the steady cost of a
    // panel re-sending its list.
    let mut controller = Controller::new(Vec::new(), Options::default());
    group.bench_function("handle_body", |b| {
        b.iter(|| {
            let (status, reply) = controller.handle_body(black_box(&body));
            assert_eq!((status, reply.res), (200, 1));
        })
    });
    assert_eq!(controller.users(), users);
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
