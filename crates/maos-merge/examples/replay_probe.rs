#![allow(missing_docs, clippy::unwrap_used)]
use std::io::BufRead;
use std::time::Instant;
fn main() {
    let repo = std::env::args().nth(1).unwrap();
    let det = maos_merge::ConflictDetector::open(&repo).unwrap();
    let mut times = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut it = line.split_whitespace();
        let (o, t) = (it.next().unwrap(), it.next().unwrap());
        let s = Instant::now();
        let c = det.check(t, o).unwrap();
        times.push(s.elapsed().as_micros());
        let _ = c;
    }
    let total: u128 = times.iter().sum();
    times.sort();
    println!("median {} us, total {} ms", times[times.len() / 2], total / 1000);
}
