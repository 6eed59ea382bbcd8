//! Rolling statistics per key over the newest `window` values.
//!
//! The window is flat: every finite float of every record joins the key's window in
//! record order, so a record with three values contributes three values. (Per-index
//! statistics would multiply hash fields by channel count; one flat window keeps the
//! `{prefix}:stats:{processor}:{key}` hash shape fixed.) NaN and infinite values are skipped: they
//! would poison min, max and mean for a whole window. `last` is the newest value kept.
//!
//! The window lives in Redis (`{prefix}:stats-window:{processor}:{key}`, a list, newest first,
//! trimmed to `window`) and a Lua script updates it and the stats hash atomically inside
//! the batch's MULTI/EXEC, next to the checkpoint. So restarts and rebalances need no
//! recomputation, and two partitions carrying the same key cannot interleave a
//! read-modify-write. [`RollingWindow`] is the same arithmetic in Rust: the reference the
//! script is tested against.

use std::collections::VecDeque;

/// Updates one key's window and stats hash.
/// KEYS[1] the window list (newest first), KEYS[2] the stats hash.
/// ARGV[1] window size, ARGV[2] updated_ts, ARGV[3..] values, oldest first.
pub const UPDATE_SCRIPT: &str = r#"
local size = tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], 0, size - 1)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local count, sum, low, high, last = 0, 0, nil, nil, nil
for _, item in ipairs(items) do
  local v = tonumber(item)
  if v then
    if last == nil then last = v end
    count = count + 1
    sum = sum + v
    if low == nil or v < low then low = v end
    if high == nil or v > high then high = v end
  end
end
if count == 0 then
  return 0
end
local function fmt(x)
  local short = string.format('%.15g', x)
  if tonumber(short) == x then return short end
  return string.format('%.17g', x)
end
redis.call('HSET', KEYS[2], 'count', count, 'min', fmt(low), 'max', fmt(high),
  'mean', fmt(sum / count), 'last', fmt(last), 'updated_ts', ARGV[2])
return count
"#;

/// The statistics of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub last: f64,
}

/// One key's newest values, newest first, at most `capacity` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingWindow {
    capacity: usize,
    newest_first: VecDeque<f64>,
}

impl RollingWindow {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity.max(1) as usize,
            newest_first: VecDeque::new(),
        }
    }

    /// Adds one record's values in order; non-finite values are skipped.
    pub fn push_record(&mut self, values: &[f64]) {
        for value in values.iter().copied().filter(|v| v.is_finite()) {
            self.newest_first.push_front(value);
        }
        self.newest_first.truncate(self.capacity);
    }

    /// Newest first, as the Redis list holds them.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.newest_first.iter().copied()
    }

    /// `None` while the window is empty. Sums newest first, as the script does.
    pub fn summary(&self) -> Option<Summary> {
        let last = *self.newest_first.front()?;
        let (mut min, mut max, mut sum) = (last, last, 0.0);
        for value in self.values() {
            min = min.min(value);
            max = max.max(value);
            sum += value;
        }
        let count = self.newest_first.len();
        Some(Summary {
            count,
            min,
            max,
            mean: sum / count as f64,
            last,
        })
    }
}

/// The finite values of a record, in order, formatted so Lua reads back the same double.
pub fn script_values(values: &[f64]) -> impl Iterator<Item = String> + '_ {
    values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| format!("{v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_values_up_to_the_window() {
        let mut window = RollingWindow::new(4);
        assert_eq!(window.summary(), None);
        window.push_record(&[1.0, 2.0]);
        window.push_record(&[3.0]);
        assert_eq!(
            window.summary(),
            Some(Summary {
                count: 3,
                min: 1.0,
                max: 3.0,
                mean: 2.0,
                last: 3.0
            })
        );
        window.push_record(&[10.0, -4.0, 6.0]);
        assert_eq!(window.values().collect::<Vec<_>>(), [6.0, -4.0, 10.0, 3.0]);
        assert_eq!(
            window.summary(),
            Some(Summary {
                count: 4,
                min: -4.0,
                max: 10.0,
                mean: 3.75,
                last: 6.0
            })
        );
    }

    #[test]
    fn a_record_longer_than_the_window_keeps_its_tail() {
        let mut window = RollingWindow::new(2);
        window.push_record(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(window.values().collect::<Vec<_>>(), [5.0, 4.0]);
        assert_eq!(window.summary().map(|s| s.mean), Some(4.5));
    }

    #[test]
    fn skips_non_finite_values() {
        let mut window = RollingWindow::new(3);
        window.push_record(&[f64::NAN, 1.0, f64::INFINITY, f64::NEG_INFINITY]);
        window.push_record(&[]);
        assert_eq!(window.values().collect::<Vec<_>>(), [1.0]);
        assert_eq!(
            script_values(&[f64::NAN, 0.1, 2.0, f64::INFINITY]).collect::<Vec<_>>(),
            ["0.1", "2.0"]
        );
    }

    #[test]
    fn window_of_one_is_the_last_value() {
        let mut window = RollingWindow::new(1);
        window.push_record(&[7.0, 8.0]);
        window.push_record(&[9.0]);
        let summary = window.summary().unwrap();
        assert_eq!(
            (
                summary.count,
                summary.min,
                summary.max,
                summary.mean,
                summary.last
            ),
            (1, 9.0, 9.0, 9.0, 9.0)
        );
    }
}
