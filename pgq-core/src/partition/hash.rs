//! PostgreSQL's `hashtext`, so that Rust routes keys as PL/Proxy's `RUN ON hashtext(key)` does.

/// PostgreSQL's `hashtext(text)` of a key under a deterministic collation: Bob Jenkins'
/// lookup3 hash of the UTF-8 bytes as `hash_bytes` computes it on a little-endian server (the
/// kind PostgreSQL runs on almost everywhere; a big-endian server hashes differently).
pub fn hashtext(key: &str) -> i32 {
    // The server's int4 is the hash's 32 bits as they are.
    i32::from_ne_bytes(hash_bytes(key.as_bytes()).to_ne_bytes())
}

/// The hash itself, unsigned, as PostgreSQL's `hash_bytes` returns it.
pub(super) fn hash_bytes(bytes: &[u8]) -> u32 {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    // The length is part of the seed; PostgreSQL takes it as a 32-bit int.
    let len = u32::try_from(bytes.len()).expect("a PostgreSQL text value is under 1 GB");
    let seed = 0x9e37_79b9_u32.wrapping_add(len).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (seed, seed, seed);
    let mut rest = bytes;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The tail, little-endian into a, b and c; the lowest byte of c is left for the length,
    // so c's bytes start one byte up.
    let mut tail = [0u8; 12];
    tail[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]) << 8);
    finish(&mut a, &mut b, &mut c);
    c
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}
