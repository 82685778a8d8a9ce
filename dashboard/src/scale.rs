//! The top of a chart's scale: robust to a past burst (a seeding load, a
//! batch job) so that today's steady load is not drawn flat under it.

/// The share of the window's non-zero values allowed above the scale (drawn
/// clipped at the top).
const CLIPPED: f64 = 0.1;

/// The scale for `values` (oldest first) whose last `recent` are "now": at
/// least every recent value, and at least 90% of the window's non-zero ones.
pub fn top(values: &[f64], recent: usize) -> f64 {
    let now = values.iter().rev().take(recent).copied().fold(0.0, f64::max);
    let mut busy: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    if busy.is_empty() {
        return now;
    }
    busy.sort_by(f64::total_cmp);
    let at = ((busy.len() as f64 * (1.0 - CLIPPED)).ceil() as usize).clamp(1, busy.len()) - 1;
    busy[at].max(now)
}

#[cfg(test)]
mod tests {
    use super::top;

    #[test]
    fn a_past_burst_does_not_set_the_scale_but_now_always_fits() {
        let mut v = vec![5000.0; 60];
        v.extend(vec![100.0; 840]);
        assert_eq!(top(&v, 60), 100.0, "a minute of seeding in 15 is clipped");
        v.push(300.0);
        assert_eq!(top(&v, 60), 300.0, "the last minute always fits");
        assert_eq!(top(&[], 60), 0.0);
        assert_eq!(top(&[0.0, 0.0, 7.0], 1), 7.0);
    }
}
