/** Money as the service reads it: a plain decimal string, never a float's exponent form. */

const DECIMAL = /^([+-]?)(\d+)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
const MAX_EXPONENT = 1000; // a string's exponent past this is a typo, not a cost

/** `0.00000018` (or `1.8e-7`, or `"1.8e-7"`) as `"0.00000018"`: OpenRouter's `usage.cost` is a
 * JSON number, which JavaScript prints with an exponent below 1e-6; the service wants digits.
 * A number is written with the shortest digits that read back as it (what JSON carried). */
export function toDecimalString(value: number | string): string {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new RangeError(`not a finite number: ${value}`);
  }
  const text = typeof value === "number" ? String(value) : value.trim();
  const match = DECIMAL.exec(text);
  if (!match) throw new RangeError(`not a decimal number: ${JSON.stringify(text)}`);
  const [, sign = "", integer = "", fraction = "", exponentText = "0"] = match;
  const exponent = Number(exponentText);
  if (Math.abs(exponent) > MAX_EXPONENT) throw new RangeError(`exponent out of range: ${text}`);
  let digits = integer + fraction;
  let point = integer.length + exponent; // where the decimal point falls within digits
  if (point <= 0) {
    digits = "0".repeat(1 - point) + digits;
    point = 1;
  } else if (point > digits.length) {
    digits += "0".repeat(point - digits.length);
  }
  const whole = digits.slice(0, point).replace(/^0+(?=\d)/, "");
  const rest = digits.slice(point);
  const plain = rest ? `${whole}.${rest}` : whole;
  return sign === "-" && /[1-9]/.test(plain) ? `-${plain}` : plain;
}
