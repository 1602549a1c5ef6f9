//! Philox4x32-10 and the mask contract against known answers: every known-answer vector of the
//! Random123 distribution (tests/data/philox4x32_10_kat.txt) and the vectors of the mask
//! contract (docs/mask-contract.md).

use fusedrop::mask;
use fusedrop::philox::philox4x32_10;

/// One line of the known-answer file: counter, key, expected output.
struct Kat {
    line: usize,
    counter: [u32; 4],
    key: [u32; 2],
    expected: [u32; 4],
}

fn parse_hex(word: &str, line: usize) -> u32 {
    u32::from_str_radix(word, 16)
        .unwrap_or_else(|e| panic!("line {line}: {word:?} is not a hexadecimal u32: {e}"))
}

fn known_answers() -> Vec<Kat> {
    let text = include_str!("data/philox4x32_10_kat.txt");
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(line, l)| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(
                fields.len(),
                12,
                "line {line}: expected 12 fields, got {l:?}"
            );
            assert_eq!(fields[0], "philox4x32", "line {line}: generator name");
            assert_eq!(fields[1], "10", "line {line}: rounds");
            let words: Vec<u32> = fields[2..].iter().map(|w| parse_hex(w, line)).collect();
            Kat {
                line,
                counter: [words[0], words[1], words[2], words[3]],
                key: [words[4], words[5]],
                expected: [words[6], words[7], words[8], words[9]],
            }
        })
        .collect()
}

#[test]
fn every_known_answer_vector_matches() {
    let kats = known_answers();
    assert_eq!(kats.len(), 55, "the known-answer file holds 55 vectors");
    for kat in &kats {
        assert_eq!(
            philox4x32_10(kat.counter, kat.key),
            kat.expected,
            "line {}: counter {:08x?} key {:08x?}",
            kat.line,
            kat.counter,
            kat.key
        );
    }
}

#[test]
fn contract_known_answer_vectors() {
    // The three vectors quoted in the contract itself.
    assert_eq!(
        philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn contract_words_for_seed_42_stream_7() {
    let expected = [0x67ee6f2c, 0xe55410cc, 0x6c7eca35, 0x557398d3];
    assert_eq!(philox4x32_10([0, 0, 7, 0], [42, 0]), expected);
    // The same words through the contract's key/counter layout, and element by element.
    assert_eq!(mask::key(42), [42, 0]);
    assert_eq!(mask::counter(0, 7), [0, 0, 7, 0]);
    for (i, &w) in expected.iter().enumerate() {
        assert_eq!(mask::word(42, 7, i as u64), w, "word of index {i}");
    }
}

#[test]
fn contract_key_and_counter_layout() {
    assert_eq!(mask::key(0x0123_4567_89ab_cdef), [0x89ab_cdef, 0x0123_4567]);
    assert_eq!(
        mask::counter(0x1111_2222_3333_4444, 0x5555_6666_7777_8888),
        [0x3333_4444, 0x1111_2222, 0x7777_8888, 0x5555_6666]
    );
    // Index i uses word i & 3 of the call for counter i >> 2.
    let (seed, subsequence) = (0xdead_beef_0bad_f00d_u64, 0x0123_4567_89ab_cdef_u64);
    for i in [0u64, 1, 2, 3, 4, 5, 1 << 34, (1 << 34) + 3, u64::MAX >> 1] {
        let words = philox4x32_10(mask::counter(i >> 2, subsequence), mask::key(seed));
        assert_eq!(
            mask::word(seed, subsequence, i),
            words[(i & 3) as usize],
            "index {i}"
        );
    }
}

fn keep_string(seed: u64, subsequence: u64, p: f32) -> String {
    (0..64u64)
        .map(|i| {
            if mask::keep(seed, subsequence, p, i) {
                '1'
            } else {
                '0'
            }
        })
        .collect()
}

#[test]
fn contract_keep_strings() {
    assert_eq!(
        keep_string(0x0123_4567_89ab_cdef, 0, 0.5),
        "1100100111001001111101110101111011100100110100110011101000100100"
    );
    assert_eq!(
        keep_string(42, 7, 0.1),
        "1111111111111111111101110110111111111001111101111111111111111111"
    );
    assert_eq!(
        keep_string(u64::MAX, 0xffff_ffff_ffff_fffe, 0.9),
        "0000110000100000100000010000001010000000000000110000000000000000"
    );
}

#[test]
fn keep_run_matches_keep() {
    for (seed, subsequence, p) in [
        (0x0123_4567_89ab_cdef_u64, 0u64, 0.5f32),
        (42, 7, 0.1),
        (1, 2, 0.0),
    ] {
        for first in [0u64, 1, 2, 3, 5, 1 << 40] {
            let mut run = vec![false; 37];
            mask::keep_run(seed, subsequence, p, first, &mut run);
            for (j, &kept) in run.iter().enumerate() {
                assert_eq!(kept, mask::keep(seed, subsequence, p, first + j as u64));
            }
        }
    }
}

#[test]
fn contract_thresholds_and_scale() {
    assert_eq!(mask::threshold(0.1), 429_496_736);
    assert_eq!(mask::threshold(0.5), 2_147_483_648);
    assert_eq!(mask::threshold(1.0), 4_294_967_296);
    assert_eq!(mask::threshold(0.0), 0);
    assert_eq!(mask::scale(0.0), 1.0);
    assert_eq!(mask::scale(0.5), 2.0);
    assert_eq!(mask::scale(1.0), 0.0);
    // p = 1 drops every word, even u32::MAX; p = 0 keeps every word, even 0.
    for i in 0..4096 {
        assert!(!mask::keep(7, 9, 1.0, i));
        assert!(mask::keep(7, 9, 0.0, i));
    }
}
