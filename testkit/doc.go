// Package testkit holds helpers that tests of several packages share:
// in-memory VM sources, a sender and receiver joined by a pipe, and random
// guest-like writes. It is imported only from tests.
package testkit
