/** toDecimalString: OpenRouter's float costs as the decimal strings the service stores. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { toDecimalString } from "../src/index.js";

test("small costs are written without exponent", () => {
  assert.equal(String(0.00000018), "1.8e-7"); // what JavaScript alone would send
  assert.equal(toDecimalString(0.00000018), "0.00000018");
  assert.equal(toDecimalString(1e-7), "0.0000001");
  assert.equal(toDecimalString(1.23456789e-10), "0.000000000123456789");
  assert.equal(toDecimalString(5e-324), `0.${"0".repeat(323)}5`);
});

test("ordinary numbers keep their shortest digits", () => {
  assert.equal(toDecimalString(0.00016), "0.00016");
  assert.equal(toDecimalString(0.1 + 0.2), "0.30000000000000004");
  assert.equal(toDecimalString(12.5), "12.5");
  assert.equal(toDecimalString(0), "0");
  assert.equal(toDecimalString(-0), "0");
  assert.equal(toDecimalString(7), "7");
});

test("large numbers are written out in full", () => {
  assert.equal(toDecimalString(1e21), "1000000000000000000000");
  assert.equal(toDecimalString(1.5e22), "15000000000000000000000");
});

test("negative numbers keep their sign", () => {
  assert.equal(toDecimalString(-1.8e-7), "-0.00000018");
  assert.equal(toDecimalString("-0.000"), "0.000");
});

test("decimal strings pass through; exponent strings are expanded", () => {
  assert.equal(toDecimalString("0.004"), "0.004");
  assert.equal(toDecimalString(" 0.10 "), "0.10");
  assert.equal(toDecimalString("1.8e-7"), "0.00000018");
  assert.equal(toDecimalString("1.8E+2"), "180");
  assert.equal(toDecimalString("2.50e1"), "25.0");
  assert.equal(toDecimalString("007.5"), "7.5");
  assert.equal(toDecimalString("5."), "5");
});

test("what is not a finite decimal is refused", () => {
  for (const bad of [
    Number.NaN,
    Number.POSITIVE_INFINITY,
    "",
    "abc",
    "1,5",
    "0x10",
    "1e",
    "1e99999",
  ]) {
    assert.throws(() => toDecimalString(bad), RangeError, String(bad));
  }
});
