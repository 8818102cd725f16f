package main

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

var durationType = reflect.TypeOf(time.Duration(0))

// bareNumber is a number with no unit: 1, 30, 1.5, -2.
var bareNumber = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// durationError is a config value that is not a duration with a unit.
// mapstructure wraps it in a DecodeError that carries the field's path, and
// durationErrors turns the pair into one line naming the field.
type durationError struct {
	value  string
	noUnit bool
}

func (e *durationError) Error() string {
	if e.noUnit {
		return fmt.Sprintf("%q has no unit; write 1s, 500ms or 2m", e.value)
	}
	return fmt.Sprintf("%q is not a duration; write 1s, 500ms or 2m", e.value)
}

// durationHook decodes time.Duration fields from strings with a unit only.
// Left to itself mapstructure reads a bare number as nanoseconds, so
// `retry_max: 30` meant 30ns: a hot reconnect loop that validate called
// fine. A bare 0 stays allowed, since it means the same in every unit
// (and "0 disables" is how several fields are documented).
func durationHook(_ reflect.Type, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch v := data.(type) {
	case time.Duration:
		return v, nil
	case string:
		s := strings.TrimSpace(v)
		if bareNumber.MatchString(s) {
			return zeroOr(s, v)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, &durationError{value: v}
		}
		return d, nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64:
		return zeroOr(fmt.Sprint(v), fmt.Sprint(v))
	}
	return data, nil // anything else: mapstructure reports the type mismatch
}

// zeroOr accepts a bare number only when it is zero.
func zeroOr(number, original string) (any, error) {
	if strings.Trim(strings.TrimLeft(number, "+-"), "0.") == "" {
		return time.Duration(0), nil
	}
	return nil, &durationError{value: original, noUnit: true}
}

// durationErrors collects, from a decode error, one "field: problem" line
// per duration field the hook refused; nil when there is none.
func durationErrors(err error) []string {
	var lines []string
	var walk func(error)
	walk = func(err error) {
		// Look at this node only: errors.As would stop at the first of
		// several wrapped errors and hide the rest.
		if de, ok := err.(*mapstructure.DecodeError); ok {
			var bad *durationError
			if errors.As(de.Unwrap(), &bad) {
				lines = append(lines, de.Name()+": "+bad.Error())
				return
			}
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	walk(err)
	return lines
}
